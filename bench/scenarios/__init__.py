"""The scenarios of `make bench`, one module each, each a function of the running stack
(bench.stack) and the report (bench.report) that adds its rows: `hit` (1, and 7's hit rows),
`miss` (2, and 7's miss rows), `singleflight` (3), `lag` (4), `memory` (5), `scaleout` (6),
`coldhit` (8), `largehit` (9), `state` (10: the costs of a request as the proxy's state grows).
bench.cli runs them in that order."""
