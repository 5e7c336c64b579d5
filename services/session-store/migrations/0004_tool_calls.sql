-- Messages the agent loop needs: typed tool calls and the call a tool message answers.
--
-- `tool_calls` keeps its jsonb column; each entry becomes exactly {id, name, arguments},
-- with `arguments` the JSON text of the call's arguments (entries written as free-form
-- objects before are rewritten: a non-string `arguments` becomes its JSON text, missing
-- members become empty strings). `tool_call_id` is the id of the call a tool message
-- answers (NULL on every other message).

ALTER TABLE messages ADD COLUMN tool_call_id text;

UPDATE messages m
SET tool_calls = (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
        'id', coalesce(c ->> 'id', ''),
        'name', coalesce(c ->> 'name', ''),
        'arguments', CASE
            WHEN c -> 'arguments' IS NULL OR jsonb_typeof(c -> 'arguments') = 'null' THEN ''
            WHEN jsonb_typeof(c -> 'arguments') = 'string' THEN c ->> 'arguments'
            ELSE (c -> 'arguments')::text
        END) ORDER BY n), '[]'::jsonb)
    FROM jsonb_array_elements(m.tool_calls) WITH ORDINALITY AS e (c, n)
)
WHERE m.tool_calls <> '[]'::jsonb AND jsonb_typeof(m.tool_calls) = 'array';
