"""Triggers for the Kakao Brain Pose API."""
