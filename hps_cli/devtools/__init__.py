"""Development helpers shipped with hps: things examples, tests and benchmarks all need."""
