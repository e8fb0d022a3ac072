-- The server's store in PostgreSQL, first version. Applied once per
-- database by `PostgresStore::open`, inside a transaction that holds
-- pg_advisory_xact_lock, and recorded in schema_migrations. Text keys use
-- the "C" collation so that every listing is in byte order, as sled's.
-- Records are the server's serde structs as JSONB, with the columns the
-- queries filter or sort on beside them. docs/store.md describes each table.

CREATE TABLE nodes (
    id text COLLATE "C" PRIMARY KEY,
    record jsonb NOT NULL,
    -- Bumped by every write: update_node's compare-and-swap.
    version bigint NOT NULL DEFAULT 0
);

CREATE TABLE reports (
    node_id text COLLATE "C" NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    received_unix_ms bigint NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (node_id, run_id)
);
CREATE INDEX reports_newest_first ON reports (node_id, received_unix_ms DESC);
CREATE INDEX reports_by_received ON reports (received_unix_ms);

CREATE TABLE revisions (
    commit text COLLATE "C" PRIMARY KEY,
    synced_unix_ms bigint NOT NULL,
    record jsonb NOT NULL
);

CREATE TABLE current_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    commit text COLLATE "C" NOT NULL
);

CREATE TABLE ca (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    certificate_pem text NOT NULL,
    -- AES-256-GCM with the operator's store key: nonce, ciphertext, tag.
    private_key_sealed bytea NOT NULL
);

-- A value sealed with the store key when the database was first opened, so
-- that a server given another key is refused at start.
CREATE TABLE store_key_check (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sealed bytea NOT NULL
);

CREATE TABLE certificates (
    serial text COLLATE "C" PRIMARY KEY,
    node_id text COLLATE "C" NOT NULL,
    not_after_unix bigint NOT NULL,
    revoked boolean NOT NULL
);
CREATE INDEX certificates_by_node ON certificates (node_id);

CREATE TABLE tokens (
    id text COLLATE "C" PRIMARY KEY,
    scope jsonb NOT NULL,
    expires_unix bigint NOT NULL,
    -- NULL: unlimited.
    uses_left bigint CHECK (uses_left >= 0),
    created_unix bigint NOT NULL
);

CREATE TABLE triggers (
    id text COLLATE "C" PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE operators (
    name text COLLATE "C" PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE audit (
    sequence bigserial PRIMARY KEY,
    time_unix_ms bigint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX audit_in_order ON audit (time_unix_ms, sequence);

CREATE TABLE settings (
    name text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
