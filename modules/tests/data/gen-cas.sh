#!/bin/sh
# Makes the two self-signed CA certificates the java_truststore tests import
# (modules/tests/files.rs, integration/tests/access_testbed.rs). Their keys
# are thrown away: only the certificates are needed.
set -eu
cd "$(dirname "$0")"
for name in one two; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout /dev/null -subj "/CN=cms test CA $name" -days 36500 \
        -out "ca-$name.pem" 2>/dev/null
done
