-- Each dashboard session names the dashboard token it was opened with (its
-- sha256, hex), so that revoking a token ends its sessions on every
-- replica. Sessions an older server opened have none and are no longer
-- valid: their users sign in again.
ALTER TABLE dashboard_sessions ADD COLUMN token_hash text COLLATE "C";
