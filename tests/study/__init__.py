"""The study tool: inputs, sweep, resume, shard schema, every table against an oracle, figures and report."""
