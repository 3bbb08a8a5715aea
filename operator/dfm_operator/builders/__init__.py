"""Pure functions from custom resources to desired objects: no I/O, no clock, no randomness."""
