-- Dashboard login tokens, shared by the replicas: the sha256 (hex) of each
-- token, never the token; when it was made and by which operator
-- ("(imported)" for one imported from a server's old
-- <data>/admin/dashboard-tokens file); and its revocation. A revoked row
-- stays, so that listings show who revoked it and adding the same hash
-- again never brings it back.
CREATE TABLE dashboard_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    created_unix_ms bigint NOT NULL,
    created_by text NOT NULL,
    revoked_unix_ms bigint,
    revoked_by text,
    CHECK ((revoked_unix_ms IS NULL) = (revoked_by IS NULL))
);
