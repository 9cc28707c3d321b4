"""Hooks for the Kakao Brain Pose API."""
