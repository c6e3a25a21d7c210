"""Helpers shared by the test suites (throw-away servers, app fixtures)."""
