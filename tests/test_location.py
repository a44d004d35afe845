"""Scene locations: what is remote, how a location is named and shown (redacted), without touching a network."""

from __future__ import annotations

import logging

import pytest

from scenetag.tiler.location import (RedactingFilter, fsspec_url, is_network, is_remote, redact, redact_text,
                                     scene_name)


@pytest.mark.parametrize("location, remote, network, shown, name", [
    ("https://u:pw@h:8080/a/b/scene.tif?X-Amz-Signature=S&X-Amz-Credential=K", True, True,
     "https://h:8080/a/b/scene.tif", "scene"),
    ("/vsicurl/https://h/x.tif?sig=S", True, True, "/vsicurl/https://h/x.tif", "x"),
    ("/vsicurl?url=https%3A%2F%2Fh%2Fx.tif&header=Authorization:S", True, True, "/vsicurl?…", "scene"),
    ("s3://bucket/drop/s.tif", True, True, "s3://bucket/drop/s.tif", "s"),
    ("/vsis3/bucket/drop/s.tif", True, True, "/vsis3/bucket/drop/s.tif", "s"),
    ("/vsizip//data/a.zip/in/s.tif", True, False, "/vsizip//data/a.zip/in/s.tif", "s"),
    ("/vsizip/s3://b/a.zip/s.tif", True, True, "/vsizip/s3://b/a.zip/s.tif", "s"),
    ("https://h/items/i.json?token=S#item-7", True, True, "https://h/items/i.json#item-7", "item-7"),
    ("/data/items.json#item-8", False, False, "/data/items.json#item-8", "item-8"),
    ("/data/scene v2.tif", False, False, "/data/scene v2.tif", "scene v2"),
    ("file:///data/s.tif", False, False, "file:///data/s.tif", "s"),
])
def test_locations_are_classified_shown_and_named(location, remote, network, shown, name):
    assert is_remote(location) is remote
    assert is_network(location) is network
    assert redact(location) == shown
    assert scene_name(location) == name
    assert "S&" not in redact(location) and "pw" not in redact(location)


def test_fsspec_urls_of_gdal_paths():
    assert fsspec_url("/vsis3/b/k.tif") == "s3://b/k.tif"
    assert fsspec_url("/vsigs/b/k.tif") == "gs://b/k.tif"
    assert fsspec_url("/vsicurl/https://h/k.tif?x=1") == "https://h/k.tif?x=1"  # as given, to be read
    assert fsspec_url("/vsizip//data/a.zip/k.tif") is None


def test_urls_inside_messages_and_log_records_are_redacted(caplog):
    text = "HTTP error code 403 on https://h/x.tif?X-Amz-Signature=SECRET: access denied (/vsis3/b/k)."
    assert redact_text(text) == "HTTP error code 403 on https://h/x.tif: access denied (/vsis3/b/k)."
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    record = logging.LogRecord("scenetag", logging.WARNING, __file__, 1, "reading %s failed",
                               ("https://h/x.tif?sig=SECRET",), None)
    assert handler.filter(record) and record.getMessage() == "reading https://h/x.tif failed"
