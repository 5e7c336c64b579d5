-- The service that called the event's producer on the user's behalf (the CloudEvents
-- `actor` extension), so events relayed from the outbox name it as direct publishes do.
ALTER TABLE outbox ADD COLUMN actor text;
