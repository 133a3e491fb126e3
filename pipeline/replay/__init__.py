"""Replay: read a range of a topic and look at it, re-deliver it, or re-run the rules over it."""
