"""The streaming benchmark: the real bot process against the fake Slack and AI/ML APIs.

`make bench` (`python -m bench`) runs scenarios (a) and (b) in every streaming mode (SLACK_STREAMING
edits, native, auto: runs `a/edits` ... `b/auto`) and (c)-(e) in the bot's default mode, prints the
tables (the modes side by side) and the targets, writes bench/results/latest.json and keeps each bot's
log in bench/results/logs/. `python -m bench --help` lists the options (`--quick`, `--scenario b`,
`--mode auto`, `--no-overlap`, `--postgres`, `--slack-latency`).

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
  limits are kept per workspace of the channel (`bench.fakes.BenchSlack`); the native streaming
  methods have the fake's own Tier 2 / Tier 4 limits. A full run takes about 14 minutes, mostly
  (c), whose 200 final edits alone need 4.5 minutes at 45 a minute, and (b) three times. `--quick`
  runs chat.update 12x faster and (a) with 5 replies instead of 20; its tables and JSON say so, and
  its numbers are not Slack's.
- (a)'s three modes run side by side, a bot each answering one reply at a time (every mode sees the
  same machine noise). In a full run they start 5 s after (c)'s model sent its last chunk, while
  (c) only waits for Slack's pace for its final edits (under one a second); their results say so
  (`ran_alongside`). `--no-overlap` runs them on their own, first (about 3.5 minutes longer).
- What a person sees is read from the fake Slack's call log (`bench.calls`), by method name and the
  text a call carries, so it holds in every mode: "status shown" is the first accepted
  `assistant.threads.setStatus` with a status; "first answer text" the first accepted
  chat.postMessage, chat.update, chat.startStream or chat.appendStream carrying answer text (not the
  "Thinking…" placeholder); the final state the last accepted such call (or chat.stopStream) of a
  thread whose last message carries the context block.
- Every reply is in every percentile: one that never showed its placeholder, text or final edit
  counts at the time the bench stopped waiting for it, and the tables count it as "never".
- Chunk lag: for each chunk the fake model sent, the time until the thread showed the answer up to
  that chunk (`BenchSlack.shown` stamps each accepted post, edit and stream call after its latency).
"""
