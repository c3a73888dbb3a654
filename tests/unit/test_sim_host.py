"""The simulator's host model: one CPU budget for every replica, the serving path and starting replicas."""

from __future__ import annotations

import dataclasses
import math

from ray.serve.config import AutoscalingConfig

from autoscaling.host_calibration import HostSamples, Window
from autoscaling.profiles import GPU_PROFILES, EngineProfile
from autoscaling.sim_host import HostCpu, fair_level
from autoscaling.simulator import PolicySetup, simulate
from autoscaling.traces import DEFAULT_TIERS, Arrival

HOST = EngineProfile(
    name="host", decode_step_s=[(1, 0.01), (8, 0.01)], prefill_s_per_token=0.0, prefill_base_s=0.0,
    max_num_seqs=64, max_ongoing_requests=4, cold_start_s=10.0, host_cores=2.0, engine_cores=2.0,
)  # fmt: skip


def fixed(replicas: int) -> PolicySetup:
    config = AutoscalingConfig(min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas)
    return PolicySetup("fixed", lambda ctx: (replicas, {}), config, surge_admission=False)


def last_done_s(profile: EngineProfile, arrivals: list[Arrival], setup: PolicySetup) -> float:
    return max(r.done_s or 0.0 for r in simulate(arrivals, profile, setup, end_s=0.0).requests)


def test_every_consumer_runs_at_full_speed_while_the_host_has_cores_to_spare() -> None:
    assert HostCpu(HOST).speed(0.0, [1], starting=0) == 1.0


def test_past_the_hosts_cores_each_consumer_gets_an_equal_share_capped_at_its_demand() -> None:
    # two replicas at 2 cores each and one start at 1 core on 2 cores: 2/3 of a core each
    share = HostCpu(dataclasses.replace(HOST, cold_start_cores=1.0)).share(0.0, [1, 1], starting=1)
    assert abs(share.engine - 1 / 3) < 1e-9 and abs(share.start - 2 / 3) < 1e-9


def test_consumers_wanting_less_than_an_equal_share_get_their_demand() -> None:
    assert abs(fair_level(2.0, [0.5, 1.0, 1.0]) - 0.75) < 1e-9
    assert fair_level(2.0, [0.5, 1.0]) == math.inf


def test_a_serving_path_spread_over_many_processes_gets_its_cpu_before_the_engines() -> None:
    # 0.8 cores of idle cluster beside an engine and a start of 1 core each, on 2 cores
    busy = dataclasses.replace(HOST, engine_cores=1.0, cold_start_cores=1.0, idle_cores=0.8)
    spread = HostCpu(dataclasses.replace(busy, light_processes=8)).share(0.0, [1], starting=1)
    assert spread.light == 1.0 and abs(spread.engine - 0.6) < 1e-9
    one = HostCpu(busy).share(0.0, [1], starting=1)  # as one consumer it would be held to 2/3 like the others
    assert abs(one.engine - 2 / 3) < 1e-9 and abs(one.light - (2 / 3) / 0.8) < 1e-9


def test_a_host_that_is_not_modelled_never_slows_anything() -> None:
    host = HostCpu(dataclasses.replace(HOST, host_cores=0.0))
    assert host.speed(0.0, [8, 8, 8], starting=3) == 1.0
    assert host.busy_delay_s(host.share(0.0, [8, 8, 8], starting=3)) == 0.0
    assert all(p.host_cores == 0 for p in GPU_PROFILES.values())


def test_a_cpu_hog_takes_a_core_like_any_consumer_and_counts_in_the_oversubscription() -> None:
    # an engine wanting 2 cores beside one hog on 2 cores: 1 core each, demand 3 cores on 2
    share = HostCpu(HOST, cpu_hogs=1).share(0.0, [1], starting=0)
    assert abs(share.engine - 0.5) < 1e-9 and abs(share.oversubscription - 1.5) < 1e-9


def test_the_serving_paths_wait_for_a_core_grows_with_the_demand_beyond_the_cores() -> None:
    host = HostCpu(dataclasses.replace(HOST, busy_host_delay_s=0.1), cpu_hogs=2)
    assert abs(host.busy_delay_s(host.share(0.0, [1], starting=0)) - 0.1) < 1e-9  # demand 4 cores on 2
    assert host.busy_delay_s(host.share(0.0, [], starting=0)) == 0.0  # 2 on 2: a core for each


def test_two_replicas_that_each_want_the_whole_host_step_at_half_speed() -> None:
    arrivals = [Arrival(0.0, 10, 50, DEFAULT_TIERS[0]) for _ in range(8)]
    apart = last_done_s(dataclasses.replace(HOST, host_cores=0.0), arrivals, fixed(2))
    shared = last_done_s(HOST, arrivals, fixed(2))
    assert abs(shared / apart - 2.0) < 0.1


def test_requests_entering_the_serving_path_take_cpu_from_the_engine() -> None:
    # 40 req/s for 10 s x 25 ms = 1 core of serving path beside the engine's 2: the engine runs at 2/3 of its
    # speed while they arrive (20 req/s at full speed, so 10 s at 2/3 leave ~3.3 s more of queue)
    arrivals = [Arrival(i * 0.025, 10, 20, DEFAULT_TIERS[0]) for i in range(400)]
    quiet = last_done_s(HOST, arrivals, fixed(1))
    busy = last_done_s(dataclasses.replace(HOST, serving_cpu_s_per_request=0.025), arrivals, fixed(1))
    assert busy - quiet > 3.0


def test_a_requests_serving_cpu_is_the_cost_at_the_batch_it_joins() -> None:
    by_batch = dataclasses.replace(HOST, serving_cpu_s_by_batch=[(1, 0.04), (16, 0.01)])
    assert by_batch.serving_cpu_s(1) == 0.04 and abs(by_batch.serving_cpu_s(6) - 0.03) < 1e-9
    assert by_batch.serving_cpu_s(500) == 0.01  # held beyond the last measured batch
    host = HostCpu(by_batch)
    host.note_request(0.0, batch=1)
    host.note_request(0.5, batch=16)
    assert abs(host.light_cores(1.0) - 0.05 / 2.0) < 1e-9  # spread over the 2 s rate window


def test_simultaneous_arrivals_are_charged_at_the_batch_they_join_together() -> None:
    # 64 at once: charged at batch 1 each (0.1 s) they would want 3.2 cores of serving path for 2 s
    arrivals = [Arrival(0.0, 10, 20, DEFAULT_TIERS[0]) for _ in range(64)]
    free = last_done_s(HOST, arrivals, fixed(1))
    first_only = last_done_s(dataclasses.replace(HOST, serving_cpu_s_by_batch=[(1, 0.1), (2, 0.0)]), arrivals,
                             fixed(1))  # fmt: skip
    assert abs(first_only / free - 1.0) < 0.05


def start_ready_s(profile: EngineProfile, arrivals: list[Arrival]) -> float:
    config = AutoscalingConfig(min_replicas=1, max_replicas=2, initial_replicas=1, upscale_delay_s=0,
                               downscale_delay_s=600)  # fmt: skip
    setup = PolicySetup("up", lambda ctx: (2, {}), config, surge_admission=False)
    result = simulate(arrivals, profile, setup, end_s=60.0)
    return next(p["t_s"] for p in result.timeline if p["replicas"] > 1)


def test_a_start_is_cpu_work_that_takes_longer_while_the_host_serves() -> None:
    # an engine wanting 2 cores and the start 1 on 1 core: the start gets half a core
    starts = dataclasses.replace(HOST, cold_start_cpu_s=10.0, cold_start_cores=1.0, host_cores=1.0)
    idle = start_ready_s(starts, [])
    serving = [Arrival(i * 0.5, 10, 2000, DEFAULT_TIERS[0]) for i in range(4)]  # one replica busy throughout
    assert 10.0 <= idle <= 15.0
    assert start_ready_s(starts, serving) > idle + 7.0


def samples(cpu_by_t: list[tuple[float, dict[str, float]]]) -> HostSamples:
    roles = {"1": ["serving", 0.0, 0], "2": ["engine", 0.0, 1], "3": ["replica:pool-main", 50.0, 1],
             "4": ["engine", 50.5, 3]}  # fmt: skip
    return HostSamples({"cores": 2, "roles": roles, "idle_window_unix_s": [0.0, 10.0],
                        "samples": [[t, 0.0, cpu] for t, cpu in cpu_by_t]})  # fmt: skip


def test_the_idle_cluster_and_a_new_replicas_start_are_read_from_the_process_samples() -> None:
    host = samples([(0.0, {"1": 0.0, "2": 0.0}), (10.0, {"1": 1.0, "2": 0.0}),
                    (50.0, {"1": 5.0, "2": 0.0, "3": 3.0}), (90.0, {"1": 9.0, "2": 0.0, "3": 23.0, "4": 30.0}),
                    (100.0, {"1": 10.0, "2": 0.0, "3": 30.0, "4": 40.0})])  # fmt: skip
    assert abs(host.idle_cores() - 0.1) < 1e-9
    # from the decision (50 s) to serving (90 s): the new actor 20 s, its new engine 30 s; the old ones not
    assert abs(host.cold_start_cpu_s(50.0, 90.0) - 50.0) < 1e-9


def test_the_serving_paths_cpu_per_request_is_what_the_phases_used_beyond_idle() -> None:
    # idle: serving 1 core-s in 10 s; phases of 10 and 40 requests, 2 s each, at 20 ms a request beyond idle
    host = samples([(0.0, {"1": 0.0, "2": 0.0}), (10.0, {"1": 1.0, "2": 0.0}), (20.0, {"1": 2.0, "2": 0.0}),
                    (22.0, {"1": 2.4, "2": 1.0}), (30.0, {"1": 3.2, "2": 1.0}),
                    (32.0, {"1": 4.2, "2": 3.0})])  # fmt: skip
    phases = [Window(20.0, 22.0, 10), Window(30.0, 32.0, 40)]
    assert abs(host.serving_cpu_s_per_request(phases) - 0.02) < 1e-9
    assert abs(host.engine_cores(phases[1:]) - 1.0) < 1e-9


def test_the_engines_cores_are_read_inside_the_batch_window_not_over_its_bracket() -> None:
    # the engine busy-waits at a core before and after the batch; the window (1.2 s) is inside 0.5 s samples
    cpu = [(20.0 + 0.5 * i, {"1": 0.0, "2": 0.5 * i}) for i in range(7)]
    host = samples([(0.0, {"1": 0.0, "2": 0.0}), (10.0, {"1": 0.0, "2": 0.0}), *cpu])
    assert abs(host.engine_cores([Window(20.9, 22.1, 16)]) - 1.0) < 1e-9


def test_a_new_replicas_start_is_its_actor_and_everything_under_it() -> None:
    # the serving replica "6" was seen under a new title after the decision (its method's name): not counted
    roles = {"1": ["serving", 0.0, 0], "6": ["replica:pool-main", 70.0, 1], "2": ["engine", 0.0, 6],
             "3": ["replica:pool-main", 50.0, 1], "4": ["engine", 60.0, 3], "5": ["serving", 55.0, 3]}  # fmt: skip
    cpu = [(50.0, {"6": 0.0, "2": 0.0, "3": 0.0, "4": 0.0, "5": 0.0}),
           (90.0, {"6": 8.0, "2": 30.0, "3": 20.0, "4": 30.0, "5": 2.0})]  # fmt: skip
    host = HostSamples({"cores": 2, "roles": roles, "idle_window_unix_s": [0.0, 10.0],
                        "samples": [[t, 0.0, c] for t, c in cpu]})  # fmt: skip
    assert abs(host.cold_start_cpu_s(50.0, 90.0) - 52.0) < 1e-9


def test_the_light_idle_counts_the_load_generator_and_not_the_engines() -> None:
    host = samples([(0.0, {"1": 0.0, "2": 0.0, "client": 0.0}), (10.0, {"1": 1.0, "2": 3.0, "client": 0.5})])
    assert abs(host.light_idle_cores() - 0.15) < 1e-9
    assert host.light_processes(Window(0.0, 10.0)) == 2  # the serving process and the load generator
