"""The serving model of one vLLM replica and the profiles its step times come from (pure logic)."""
