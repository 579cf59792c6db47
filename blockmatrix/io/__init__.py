"""Readers and writers of block matrices in files."""
