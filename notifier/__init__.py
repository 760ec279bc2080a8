"""The notifier: tells people and systems how runs ended. Consumes final execution
states from BD_EVENTS, evaluates the task's and the batch's `notify` rules, and delivers
one email (SMTP) or one signed webhook POST per recipient and execution, recorded in
KV `bd_notifications` and as `bd.{org}.evt.notify.{execution_id}` events the store keeps."""
