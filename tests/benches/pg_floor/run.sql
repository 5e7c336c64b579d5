-- One run as four commits, the fewest that keep each service's writes its own and every
-- acknowledged step durable: the admission (run and its event), the user's message, the
-- assistant's message, the run's end (with its checkpoint and event). Between them the
-- history window is read. No outbox relay, no idempotency keys, no agent read.
\set s random(1, 64)
\set r random(1, 9000000000000000)
BEGIN;
INSERT INTO runs (id, session_id, status) VALUES (:r, :s, 'running');
INSERT INTO outbox (topic, payload) VALUES ('run.started', '\x0102030405060708');
COMMIT;
WITH message AS (INSERT INTO messages (session_id, role, content) VALUES (:s, 'user', 'twenty characters ab') RETURNING id),
     event AS (INSERT INTO outbox (topic, payload) SELECT 'message.created', '\x01'::bytea FROM message)
UPDATE sessions SET message_count = message_count + 1, last_activity = now() WHERE id = :s;
SELECT id, role, content FROM messages WHERE session_id = :s ORDER BY created_at DESC, id DESC LIMIT 50;
WITH message AS (INSERT INTO messages (session_id, role, content) VALUES (:s, 'assistant', 'the answer, twice as long as that') RETURNING id),
     event AS (INSERT INTO outbox (topic, payload) SELECT 'message.created', '\x01'::bytea FROM message)
UPDATE sessions SET message_count = message_count + 1, last_activity = now() WHERE id = :s;
BEGIN;
UPDATE runs SET status = 'completed', checkpoint = repeat('x', 600), updated_at = now() WHERE id = :r;
INSERT INTO outbox (topic, payload) VALUES ('run.completed', '\x0102030405060708');
COMMIT;
