"""The `host` target is detected from /proc/cpuinfo: it never claims an ISA the machine lacks nor denies one it has."""
from __future__ import annotations

import pytest

from edgekit.targets import host_target, load_target, target_names
from edgekit.targets.host import host_profile, isa_label, parse_cpuinfo, read_cpuinfo

AVX2_ONLY = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
cpu MHz		: 2450.000
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx mmxext lm constant_tsc pni \
pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm \
sse4a bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 avx avx2 fma
"""

AVX512_VNNI = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
cpu MHz		: 3500.000
flags		: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512ifma avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq
"""

ARM_DOTPROD = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU part	: 0xd0b
"""


def test_avx2_only_cpu():
    info = parse_cpuinfo(AVX2_ONLY)
    assert info["model"] == "AMD EPYC 7B13" and info["mhz"] == 2450.0 and info["arch"] == "x86-64"
    assert {"avx2", "fma"} <= set(info["flags"]) and not {"avx512f", "avx512_vnni", "avx_vnni"} & set(info["flags"])
    t = host_profile(AVX2_ONLY, cores=2, mem_bandwidth_gbs=10.0)
    assert t.name == "host" and t.threads == 2 and t.hardware.cores == 2 and t.hardware.name == "AMD EPYC 7B13"
    assert "AVX2" in t.hardware.isa and "AVX-512" not in t.hardware.isa and "VNNI" not in t.hardware.isa
    assert t.round_to == 8 and "bf16" not in t.precisions
    fp32 = 8 * 2 * 2 * 2 * 2.45                       # lanes x FMA x pipes x cores x GHz (cpu MHz)
    assert t.hardware.peak_gflops["fp32"] == pytest.approx(fp32, rel=1e-3)
    assert t.hardware.peak_gflops["int8"] == pytest.approx(2 * fp32, rel=1e-3)   # no VNNI: 2x
    assert "estimate" in t.hardware.source and "cpu MHz" in t.hardware.source


def test_avx512_vnni_cpu():
    t = host_profile(AVX512_VNNI, cores=4, mem_bandwidth_gbs=20.0)
    assert "AVX-512F" in t.hardware.isa and "AVX-512 VNNI" in t.hardware.isa and "AMX" not in t.hardware.isa
    assert t.round_to == 16 and t.hardware.cores == 4
    fp32 = 16 * 2 * 2 * 4 * 2.90                      # the model name's base clock wins over cpu MHz (3.5)
    assert t.hardware.peak_gflops["fp32"] == pytest.approx(fp32, rel=1e-3)
    assert t.hardware.peak_gflops["int8"] == pytest.approx(4 * fp32, rel=1e-3)   # VNNI: 4x
    assert "model name" in t.hardware.source


def test_arm_cpu():
    t = host_profile(ARM_DOTPROD, cores=4, mem_bandwidth_gbs=5.0)
    assert t.hardware.isa.startswith("arm64") and "NEON" in t.hardware.isa and "dotprod" in t.hardware.isa
    assert t.round_to == 4 and "0xd0b" in t.hardware.name
    assert t.hardware.peak_gflops["int8"] == pytest.approx(4 * t.hardware.peak_gflops["fp32"])


def test_this_host_profile_matches_its_cpuinfo(monkeypatch):
    monkeypatch.delenv("EDGEKIT_HOST_TARGET", raising=False)
    text = read_cpuinfo()
    if not text:
        pytest.skip("no /proc/cpuinfo here")
    h = host_target()
    info = parse_cpuinfo(text)
    assert h.name == "host" and h.hardware.isa == isa_label(info) and h.hardware.name == info["model"]
    flags = set(next(ln.split(":", 1)[1].split() for ln in text.splitlines()
                     if ln.startswith(("flags", "Features"))))
    for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_vnni", "AVX-512 VNNI"),
                        ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8")):
        assert (f" {label} " in f" {h.hardware.isa} ") == (flag in flags), flag
    assert "host" in target_names() and load_target("host").hardware.isa == h.hardware.isa


def test_env_still_picks_another_host_profile(monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOST_TARGET", "host-epyc-zen3")
    assert host_target().name == "host-epyc-zen3"
