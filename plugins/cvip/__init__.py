"""cvip: which director owns each cluster virtual IP (built-in plugin; see docs/cvip.md)."""
