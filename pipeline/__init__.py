"""instantly-audit: the vendor-neutral pipeline runtime (sources, bus, rules, delivery, replay)."""

__version__ = "0.1.0"
