ALTER TABLE audit_outbox ADD COLUMN traceparent TEXT;
