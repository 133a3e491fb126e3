"""Test suite for instantly-audit."""
