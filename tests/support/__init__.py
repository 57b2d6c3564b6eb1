"""Helpers the tests share: model writers, servers, oracles."""
