"""The streaming benchmark: the real bot process against the fake Slack and AI/ML APIs.

`make bench` (`python -m bench`) runs scenarios (a)-(e) in sequence, prints the tables and the
targets, writes bench/results/latest.json and keeps each bot's log in bench/results/logs/.
`python -m bench --help` lists the options (`--quick`, `--only a,c`, `--postgres`, `--slack-latency`).

How it measures (details in the modules):
- Every scenario gets fresh fakes, a fresh database and a fresh `python -m bot run` (HTTP mode,
  PORT=0, the port read from its log), warmed up by one unmeasured reply. Peak RSS is VmHWM and
  CPU time is utime+stime from /proc, taken while the child runs; its log is scanned for errors.
- Times are `time.monotonic()` of this process: the fakes stamp what they receive, send and show
  (`BenchSlack.shown`, `RecordedRequest.received_at`, `RecordedRequest.content_sent_at`); events are sent
  and their acknowledgements timed from a separate thread, so the fakes' work does not inflate them.
- Slack: the fake has Slack's real limits in every scenario (chat.update 50 a minute per workspace
  with a burst of 10, chat.postMessage about one a second per channel, conversations.replies Tier 3,
  users.info Tier 4) and a lognormal latency per call, median 60 ms (`bench.fakes.SlackModel`); its
  limits are kept per workspace of the channel (`bench.fakes.BenchSlack`). A full run takes 12-15
  minutes, mostly (c), whose 200 final edits alone need 4.5 minutes at 45 a minute. `--quick` runs
  chat.update 12x faster and (a) with 5 replies instead of 20 (about 3 minutes); its tables and JSON say
  so, and its numbers are not Slack's.
- Every reply is in every percentile: one that never showed its placeholder, text or final edit
  counts at the time the bench stopped waiting for it, and the tables count it as "never".
- Chunk lag: for each chunk the fake model sent, the time until the thread showed the answer up to
  that chunk (`BenchSlack.shown` stamps each accepted post and edit after its latency).
"""
