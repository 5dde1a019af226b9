"""The synthetic slide generator: pyramidal slides with exact ground truth (docs/synth.md)."""
