-- kefu 0004: the broker marks a queued message sent by (message id, client id). With only
-- (client_id, seq) and (message_id) to choose from, a planner without fresh statistics
-- walks a long queue of one client for every mark (seen on PostgreSQL: O(queue) per
-- delivery); one index on both makes it a point lookup, and still serves pruning.
CREATE INDEX mqtt_queue_message_client ON mqtt_queue (message_id, client_id);
DROP INDEX mqtt_queue_message;
