"""Sensors for the Kakao Brain Pose API."""
