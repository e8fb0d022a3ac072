-- Dashboard sessions, shared by the replicas: the sha256 (hex) of each
-- session cookie and when it expires. Expired rows are deleted when a
-- session opens.
CREATE TABLE dashboard_sessions (
    hash text COLLATE "C" PRIMARY KEY,
    expires_unix_ms bigint NOT NULL
);
