-- Catch-up after downtime asks which conversations were heard from lately, and what the newest
-- event of each was (`Conversations::last_heard`): the inbox indexed by arrival time answers
-- that from the recent rows only. Same meaning on SQLite and Postgres.
CREATE INDEX inbox_by_received ON inbox (received_at);
