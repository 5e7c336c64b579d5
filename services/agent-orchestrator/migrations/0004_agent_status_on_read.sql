-- An agent's status is derived from its runs when the agent is read (rows.rs,
-- `agent_status!`), no longer stored: keeping it stored meant every admission and every
-- run's end locked the agent's row to rewrite it, so all runs of one agent queued behind
-- that lock (docs/benchmarks.md, round 4).
ALTER TABLE agents DROP COLUMN status;
