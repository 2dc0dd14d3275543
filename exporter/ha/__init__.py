"""High availability on a shared PostgreSQL state: `leadership` (this replica's role, and the
fence every commit passes through) and `mirror` (what a standby serves meanwhile)."""
