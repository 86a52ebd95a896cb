"""Tests of the lifecycle machines (fsm/)."""
