"""A library a later step imports (tests/pipeline/test_step_server.py): nothing imports it unless asked."""
