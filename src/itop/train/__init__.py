"""The training application: `itop train`, built on the public engine API like any user's loop."""
