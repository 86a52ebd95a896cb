"""tvixd."""
