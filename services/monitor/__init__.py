"""The monitor service (work in progress: pure logic so far; see the open monitor issue)."""
