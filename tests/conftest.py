"""Suite-wide settings. Area fixtures live in tests/<area>/conftest.py; shared harnesses in tests/harness/."""
