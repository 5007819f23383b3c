"""`dysco bench` pieces: the reconfiguration timing and the headline numbers."""

from __future__ import annotations

from dysco.lab import bench
from dysco.lab.topology import Lab


def test_reconfiguration_of_idle_sessions(lab: Lab) -> None:
    """20 idle sessions replaced mb1 -> mb3 by one order; all still echo afterwards."""
    out = bench.reconfiguration(lab, 20)
    assert out["ok"], out
    assert out["order"]["done"] == 20 and out["echo_after"] == {"ok": 20, "failed": 0}
    assert 0 < out["p50_s"] <= out["p99_s"] <= out["seconds"]
    assert out["agent_rss_kib_per_session"] is not None


def test_summary_from_rows() -> None:
    rows = [{"label": "plain", "fwd_gbps": 8.0, "rev_gbps": 12.0, "rr_p50_us": 40.0},
            {"label": "ct", "conntrack": True, "fwd_gbps": 8.0, "rev_gbps": 8.0,
             "rr_p50_us": 45.0},
            {"label": "1", "hops": 1, "backend": "raw", "fastpath": True, "mbfast": True,
             "fwd_gbps": 0.2,
             "rev_gbps": 0.2, "rr_p50_us": 540.0, "setup_per_s": 900.0,
             "setup_burst_per_s": 1500.0, "setup_per_s_per_agent_cpu": 4000.0,
             "install_us_per_session": 30.0},
            {"label": "2", "hops": 2, "backend": "raw", "fastpath": True, "mbfast": True,
             "fwd_gbps": 0.1, "rev_gbps": 0.3, "rr_p50_us": 840.0},
            {"label": "2h", "hops": 2, "backend": "raw", "fastpath": True, "mbfast": False,
             "fwd_gbps": 0.05, "rev_gbps": 0.05, "rr_p50_us": 1040.0},
            {"label": "2q", "hops": 2, "backend": "raw", "fastpath": False,
             "fwd_gbps": 0.1, "rev_gbps": 0.1, "rr_p50_us": 900.0},
            {"label": "1b", "hops": 1, "backend": "binding", "fastpath": False,
             "fwd_gbps": 0.04, "rev_gbps": 0.04, "rr_p50_us": 400.0}]
    head = bench.summary(rows, [{"sessions": 1000, "seconds": 3.5, "p50_s": 2.0,
                                 "p99_s": 3.4}])
    assert head["goodput_ratio"] == {"1": 0.02, "2": 0.02}
    assert head["goodput_ratio_conntrack_baseline"] == {"1": 0.025, "2": 0.025}
    assert head["goodput_ratio_queue_path"] == {"2": 0.01}
    assert head["goodput_ratio_end_hosts_only"] == {"2": 0.005}
    assert head["added_rtt_us_p50_per_hop_end_hosts_only"] == {"2": 500.0}
    assert head["setup_per_s_by_chain"]["1"] == 900.0
    assert head["setup_burst_per_s_by_chain"]["1"] == 1500.0
    assert head["setup_per_s_per_agent_cpu_by_chain"]["1"] == 4000.0
    assert head["install_us_per_session_by_chain"]["1"] == 30.0
    assert head["added_rtt_us_p50_per_hop_by_chain"] == {"1": 500.0, "2": 400.0}
    assert head["added_rtt_us_p50_per_hop"] == 450.0
    assert head["replace_1000_sessions_s"] == 3.5
    assert head["replace_1000_sessions_p99_s"] == 3.4


def test_load_holds_sessions_and_reconfigures_some(lab: Lab) -> None:
    """`dysco bench --load`: 200 sessions at once, 50 of them replaced; all still echo,
    none is reset, and the memory per session is measured."""
    out = bench.load(lab, 200, 50)
    assert out["ok"], out
    assert out["order"]["done"] == 50
    assert out["echo_after"] == [{"ok": 150, "failed": 0}, {"ok": 50, "failed": 0}]
    assert "HopFailed" not in out["notifications"] and not out["rejected"]
    assert 0 < out["core_bytes_per_session"]["left"] < out["core_bytes_per_session"]["middle"]
