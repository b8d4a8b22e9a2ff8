"""The streaming benchmark: the real bot process against the fake Slack and AI/ML APIs.

`make bench` (`python -m bench`) runs scenarios (a)-(e) in sequence, prints the tables and the
targets, writes bench/results/latest.json and keeps each bot's log in bench/results/logs/.
`python -m bench --help` lists the options (`--only a,c`, `--postgres`, `--real-limits`).

How it measures (details in the modules):
- Every scenario gets fresh fakes, a fresh database and a fresh `python -m bot run` (HTTP mode,
  PORT=0, the port read from its log), warmed up by one unmeasured reply. Peak RSS is VmHWM and
  CPU time is utime+stime from /proc, taken while the child runs; its log is scanned for errors.
- Times are `time.monotonic()` of this process: the fakes stamp what they receive and send
  (`Call.time`, `RecordedRequest.received_at`, `RecordedRequest.content_sent_at`); events are sent
  and their acknowledgements timed from a separate thread, so the fakes' work does not inflate them.
- Workspaces: the bot has one token; `bench.fakes.BenchSlack` keeps Slack's rate limits per
  workspace of the channel (see there). chat.update is 50 a minute with a burst of 10 in (a) and (b);
  (c)-(e) run it 12x faster, because at 50 a minute 200 final edits alone take 4 minutes (see
  `bench.scenarios`); `--real-limits` runs them at 50 too.
"""
