"""Decoding the frames ``select_frame_indices`` picked, from a video stream PyAV has opened.

Frame ``i`` is the i-th frame that a decode from the start of the stream gives, in presentation order: PLM's
trainer counts frames this way (``frame_selection.py``). ``decode_in_order`` does exactly that, one frame
after another up to the last one wanted: the whole clip's cost for a few frames (32 frames of a 90 s 720p
video: every one of its 2700 frames). ``decode_seeking`` gives the same arrays much faster:

1. One demux pass reads the packets' timestamps, decoding nothing (a few percent of a decode's time), from
   the start to the GOP after the last wanted frame (``scan_packets``): sorted, the i-th presentation
   timestamp (pts) is frame i. Indices come from counting packets, never from pts x frame rate, so a stream
   whose first pts is not 0 and a variable frame rate need no special case.
2. For each wanted frame it seeks to the last keyframe before it (``PacketTable.start_of``) and decodes from
   there. The next wanted frame reuses the decoder when no keyframe lies between the packets already sent
   and it (seeking would redo that work) or the keyframe is the next packet; when one lies further (the frame
   is more than a GOP ahead), it seeks again.
3. It decodes with frame threads (``thread_type = "AUTO"``). Frames are told apart by pts: PyAV's
   ``frame.index`` is wrong under frame threading (PyAV issue #1158). FFmpeg's decoders are deterministic, and
   frame threading changes when frames come out, not their pixels, so a frame decoded from its GOP's keyframe
   is bit-identical to the same frame decoded from the start of the file (tests/test_frame_decoding.py and
   benchmarks/video_decode.py compare every frame with a one-thread decode from the start).

``decode_seeking`` returns None, and the caller decodes from the start of a freshly opened file as before
(``decode_in_order``), when the packets cannot be trusted to be the frames one to one, in presentation order:

- the scan finds a packet without a pts (raw H.264 / HEVC), a packet the demuxer marks to discard (an MP4 edit
  list that trims the start: the decoder drops those frames, so they have no index), an empty packet before
  the last, two packets with one pts, a first packet that is not a keyframe with the earliest pts, keyframe
  pts that do not increase (timestamps that restart: sorting would interleave the parts), or fewer packets
  than the last index wanted (the in-order path repeats the last frame, or says where the file stops);
- or the decode shows it: a seek lands past the keyframe asked for, packets come in another order than the
  scan's, a frame comes out with a pts no packet had, or out of order or with one missing (AVI stores
  H.264 B-frames with decode-order pts; a decoder that drops a frame shifts every later index), or FFmpeg
  raises (the in-order path raises its own error, naming the file).

Both give each frame as a player shows it (``frame_pixels``): turned by the stream's display matrix (a phone's
portrait video is stored landscape with a 90-degree matrix).

torchcodec, PLM's own decoder, is not offered as a backend: it cannot be installed where this project is
tested, so its frames could not be checked against these arrays, and an unchecked path would silently train on
different pixels. PyAV stays the one decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from plm_tune.errors import MediaError, Reason

__all__ = ["Keyframe", "PacketTable", "SeekDecode", "decode_in_order", "decode_seeking", "frame_pixels",
           "presentation_times", "scan_packets"]


def frame_pixels(frame: Any) -> np.ndarray:
    """A decoded PyAV frame as RGB ``(H, W, 3)`` uint8, turned and mirrored as a player shows it.

    The display matrix (MP4 / MOV ``tkhd`` matrix, Matroska projection; FFmpeg hands it to each decoded frame as
    ``AV_FRAME_DATA_DISPLAYMATRIX`` side data) is applied as ``ffmpeg``'s autorotate and ``ffplay`` apply it
    (FFmpeg 8 ``fftools/ffmpeg_filter.c`` and ``ffplay.c``, the filters chosen after ``get_rotation``): quarter
    turns, with the transposes and flips they pick from the matrix's signs. A rotation that is not a multiple
    of 90 degrees (FFmpeg draws it on a larger canvas) keeps the stored pixels.
    """
    rgb = frame.to_ndarray(format="rgb24")
    try:
        matrix = np.frombuffer(bytes(frame.side_data["DISPLAYMATRIX"]), dtype=np.int32)  # 3x3, 16.16 fixed point
    except KeyError:
        return rgb
    a, b, _, c, d = (float(v) / 65536 for v in matrix[:5])
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return rgb  # a degenerate matrix: FFmpeg reads no rotation from it either
    # Clockwise degrees, as FFmpeg's get_rotation (-round(av_display_rotation_get)) computes it.
    theta = round(math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))) % 360
    if theta == 90:
        return np.ascontiguousarray(rgb.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(rgb, -1))
    if theta == 270:
        return np.ascontiguousarray(np.rot90(rgb, -1)[::-1] if matrix[3] < 0 else np.rot90(rgb, 1))
    if theta == 180:
        rgb = rgb[:, ::-1] if matrix[0] < 0 else rgb
        return np.ascontiguousarray(rgb[::-1] if matrix[4] < 0 else rgb)
    return np.ascontiguousarray(rgb[::-1]) if theta == 0 and matrix[4] < 0 else rgb


class Keyframe(NamedTuple):
    """A keyframe packet: its place in decode order, its pts and dts (None when the container has none)."""

    position: int
    pts: int
    dts: int | None


@dataclass(frozen=True)
class PacketTable:
    """Where each frame of a stream lives, from one demux pass (nothing decoded), up to the last frame wanted.

    ``order[i]`` is frame i's pts; ``position[pts]`` its packet's place in decode order (0 = first packet);
    ``index[pts]`` its frame index; ``keyframes`` every keyframe packet read, in decode order.
    """

    order: list[int]
    position: dict[int, int]
    index: dict[int, int]
    keyframes: list[Keyframe]

    def start_of(self, frame: int) -> Keyframe:
        """The keyframe to decode ``frame`` from: the last keyframe that comes before it in decode order and
        does not show after it. An open GOP's leading frames are sent after their keyframe but shown before it,
        and reference the GOP before: they need the keyframe before that one."""
        pts = self.order[frame]
        position = self.position[pts]
        start = self.keyframes[0]  # the stream's first packet and earliest pts (scan_packets checks both)
        for key in self.keyframes:
            if key.position > position:
                break
            if key.pts <= pts:
                start = key
        return start


def scan_packets(container: Any, stream: Any, last_frame: int) -> PacketTable | None:
    """The ``PacketTable`` of a stream up to frame ``last_frame``, or None when its packets cannot be trusted to
    be its frames one to one (see the module docstring); the container must be seeked before decoding.

    Reads packets until the place of frame ``last_frame`` is certain, not to the end of a long video: until a
    keyframe arrives whose previous keyframe shows after that frame. Every packet from there on shows after
    that previous keyframe (frames sent after a keyframe show after the keyframe before it, open GOPs too), so
    no later packet can come before ``last_frame``.
    """
    in_decode_order: list[int] = []
    keyframes: list[Keyframe] = []
    ended = False  # an empty packet was seen: PyAV's closing packet, which flushes the decoder
    for packet in container.demux(stream):
        if packet.size == 0:
            ended = True
            continue
        if ended or packet.pts is None or packet.is_discard:
            return None
        if packet.is_keyframe:
            if keyframes and packet.pts <= keyframes[-1].pts:
                return None  # timestamps that restart (joined recordings): sorting would interleave the parts
            if len(in_decode_order) > last_frame and keyframes[-1].pts > sorted(in_decode_order)[last_frame]:
                break
            keyframes.append(Keyframe(len(in_decode_order), packet.pts, packet.dts))
        in_decode_order.append(packet.pts)
    order = sorted(in_decode_order)
    if not keyframes or (keyframes[0].position, keyframes[0].pts) != (0, order[0]) or len(set(order)) != len(order):
        return None
    return PacketTable(order=order, position={pts: i for i, pts in enumerate(in_decode_order)},
                       index={pts: i for i, pts in enumerate(order)}, keyframes=keyframes)


def presentation_times(container: Any, stream: Any, until: float) -> list[float] | None:
    """Seconds from the first frame of frames ``0, 1, ...`` (presentation order) up to past ``until`` seconds,
    from one demux pass over the packets' timestamps (``pts * time_base``; nothing decoded).

    Stops as ``scan_packets`` does: once a keyframe arrives whose previous keyframe shows after ``until``, no
    later packet can show before it. Returns None when the packets cannot be trusted to be the frames (a packet
    without a pts, or one the demuxer marks to discard); the container must be seeked before decoding.
    """
    pts: list[int] = []
    first = None  # the earliest pts read: frame 0's, once the first GOP is read
    key_before = None  # pts of the keyframe before the last one read
    limit = None if stream.time_base is None else until / float(stream.time_base)
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None or packet.is_discard:
            return None
        if packet.is_keyframe:
            if limit is not None and key_before is not None and key_before - first > limit:
                break
            key_before = packet.pts
        pts.append(packet.pts)
        first = packet.pts if first is None else min(first, packet.pts)
    if not pts or stream.time_base is None:
        return None
    order = sorted(pts)
    return [float((p - order[0]) * stream.time_base) for p in order]


class SeekDecode(NamedTuple):
    """What ``decode_seeking`` did: the wanted frames; how many packets it sent to the decoder, and how many it
    read to find them (``scan_packets``): the work the seeks saved."""

    frames: list[np.ndarray]
    packets_decoded: int
    packets_scanned: int


class _Untrusted(Exception):
    """The stream or decoder broke one of ``decode_seeking``'s checks: decode in order instead."""


def decode_seeking(container: Any, stream: Any, indices: list[int]) -> SeekDecode | None:
    """The frames at ``indices`` (increasing), found by seeking to keyframes and decoded on frame threads.

    Args:
        container, stream: a PyAV input container and its video stream, not yet decoded from (the thread type
            can be set only before the decoder opens).
        indices: strictly increasing frame indices, counted in presentation order from the stream's first frame.

    Returns:
        The same ``(H, W, 3)`` uint8 arrays ``decode_in_order`` gives, or None when the stream cannot be trusted
        to give them this way (the module docstring lists when): decode in order on a freshly opened file then.
    """
    import av  # noqa: PLC0415 - imported lazily: only video users pay for it

    if not indices:
        return None
    try:
        table = scan_packets(container, stream, indices[-1])
        if table is None or indices[-1] >= len(table.order):
            return None
        # FRAME | SLICE threads, as many as FFmpeg picks for the CPU (thread_count 0, PyAV's default).
        stream.thread_type = "AUTO"
        frames, decoded = _decode_from_keyframes(container, stream, table, indices)
    except (_Untrusted, av.FFmpegError):
        return None
    return SeekDecode([frames[i] for i in indices], decoded, len(table.order))


def _decode_from_keyframes(container: Any, stream: Any, table: PacketTable,
                           indices: list[int]) -> tuple[dict[int, np.ndarray], int]:
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    sent = -1  # decode position of the last packet sent to the decoder (-1: none yet)
    first = expected = 0  # frame index of the keyframe seeked to, and the index the next decoded frame must have
    decoded = 0
    drained = False  # the decoder was sent its end: it holds no more frames until the next seek
    packets: Iterator[Any] | None = None  # the demuxer's packets since the last seek (the scan read to its end)
    for target in indices:
        if target in frames:  # came out with an earlier target's packets
            continue
        key = table.start_of(target)
        if packets is None or key.position > sent + 1:  # a keyframe past the next packet: jump, skip those between
            packets = _seek(container, stream, table, key)
            sent, drained = key.position - 1, False
            first = expected = table.index[key.pts]
        while target not in frames:
            packet = next(packets, None)
            if packet is None or drained:  # the stream ended before the decoder gave the frame
                raise _Untrusted
            if packet.size:
                position = table.position.get(packet.pts)
                if position is None and sent == len(table.order) - 1:
                    packet = None  # past the packets scanned: end the decoder's input as the stream's end would
                elif position != sent + 1:
                    raise _Untrusted
                else:
                    sent += 1
                    decoded += 1
            drained = packet is None or packet.size == 0  # the closing empty packet drains the decoder too
            for frame in stream.decode(packet):
                index = table.index.get(frame.pts) if frame.pts is not None else None
                if index is None:
                    raise _Untrusted
                if index < first:  # an open GOP's leading frame: its references come before the keyframe
                    continue
                if index != expected:  # the decoder dropped a frame: counted from the start, indices would shift
                    raise _Untrusted
                expected += 1
                if index in wanted:
                    frames[index] = frame_pixels(frame)
    return frames, decoded


def _seek(container: Any, stream: Any, table: PacketTable, key: Keyframe) -> Iterator[Any]:
    """Seek to ``key``: the demuxer's packets from ``key``'s packet, where the decoder starts, on.

    Demuxers seek by different clocks: MP4 and Matroska by pts, landing on the keyframe or before it (MP4 one
    GOP early on a variable frame rate stream); MPEG-TS by dts, so that a keyframe's pts lands after it (its
    dts is lower). Packets before ``key`` are read and dropped, not decoded (demuxing costs little next to
    decoding); the pts is tried first, the dts when the pts lands too late.
    """
    for timestamp in dict.fromkeys(t for t in (key.pts, key.dts) if t is not None):
        container.seek(timestamp, stream=stream, backward=True)  # also flushes the decoder
        packets = container.demux(stream)
        for packet in packets:
            position = table.position.get(packet.pts) if packet.size and packet.pts is not None else None
            if position is None or position > key.position:
                break
            if position == key.position:
                return chain([packet], packets)
    raise _Untrusted


def decode_in_order(container: Any, stream: Any, indices: list[int], path: str) -> list[np.ndarray]:
    """Decode the frames at these (increasing) indices, counted in presentation order, in one forward pass.

    Raises:
        MediaError: frames stop decoding (a truncated or corrupt file) more than one frame before a wanted
            index: the header promised frames that are not there, and repeating the last good frame would
            train on a still image labelled as motion (``Reason.TRUNCATED_VIDEO``); or no frame decodes at all
            (``Reason.UNREADABLE_VIDEO``).
    """
    picked: list[np.ndarray] = []
    wanted = iter(indices)
    target = next(wanted, None)
    last = None  # (index, frame) of the last decoded frame
    broke = None
    try:
        for index, frame in enumerate(container.decode(stream)):
            last = (index, frame)
            if index == target:
                picked.append(frame_pixels(frame))
                target = next(wanted, None)
                if target is None:
                    break
    except Exception as err:  # corrupt packets surface as av errors mid-stream
        if last is None:
            raise MediaError(Reason.UNREADABLE_VIDEO, f"Could not decode video frames of '{path}': {err}") from err
        broke = err
    if target is not None and last is not None and target - last[0] > 1:
        # A frame count in the header one too high is normal: the last frame serves that index.
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        at = f"{last[0] / rate:.2f}s" if rate else f"frame {last[0]}"
        until = f"{indices[-1] / rate:.2f}s" if rate else f"frame {indices[-1]}"
        why = f" ({type(broke).__name__}: {broke})" if broke is not None else ""
        raise MediaError(
            Reason.TRUNCATED_VIDEO,
            f"Video '{path}' stops decoding at {at} but its header promises frames up to {until}{why}: the "
            "file is truncated or corrupt.", f"Re-download or re-encode it, or end the clip before {at}.")
    while target is not None and last is not None:
        picked.append(frame_pixels(last[1]))
        target = next(wanted, None)
    return picked
