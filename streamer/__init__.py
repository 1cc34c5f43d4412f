"""The `streamer` command line: cli.py is the parser and the dispatch; each command group registers
itself in its own *_cmds.py (run, bench + profile, model: presets and weights, build + export +
inspect, trust: keygen, quality: verify + calibrate, plan, serve + client, train + eval). The
numpy contract they share with the runtime is unitio/."""
__version__ = "0.1.0"
