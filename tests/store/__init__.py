"""Tests of the store: path infos, NAR bridging."""
