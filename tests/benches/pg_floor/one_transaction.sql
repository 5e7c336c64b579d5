-- The same writes as run.sql in a single transaction: one commit per run, which no design
-- with the session's messages and the run in different services can have. A ceiling.
\set s random(1, 64)
\set r random(1, 9000000000000000)
BEGIN;
INSERT INTO runs (id, session_id, status) VALUES (:r, :s, 'running');
INSERT INTO outbox (topic, payload) VALUES ('run.started', '\x0102030405060708');
INSERT INTO messages (session_id, role, content) VALUES (:s, 'user', 'twenty characters ab');
SELECT id, role, content FROM messages WHERE session_id = :s ORDER BY created_at DESC, id DESC LIMIT 50;
INSERT INTO messages (session_id, role, content) VALUES (:s, 'assistant', 'the answer, twice as long as that');
INSERT INTO outbox (topic, payload) VALUES ('message.created', '\x01'), ('message.created', '\x01');
UPDATE sessions SET message_count = message_count + 2, last_activity = now() WHERE id = :s;
UPDATE runs SET status = 'completed', checkpoint = repeat('x', 600), updated_at = now() WHERE id = :r;
INSERT INTO outbox (topic, payload) VALUES ('run.completed', '\x0102030405060708');
COMMIT;
