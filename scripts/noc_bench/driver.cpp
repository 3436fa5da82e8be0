// Traffic driver for the NoC benchmark (scripts/bench_noc.py): a BookSim-style load point, or a
// scripted list of packets, on the Verilated mesh. The mesh-specific parts (port bindings, the
// header layout) come from "mesh_ports.h", which scripts/bench_noc.py generates from the RTL's
// own FlitFormat.
//
// Endpoints: every tile's local port has a source with an infinite queue and a credit counter
// that starts at DEPTH (a credit pulse from the router is usable from the next cycle, as in the
// router's own CreditCounter), and a sink that takes every flit the cycle it arrives and
// returns its credit in the next cycle. Edge ports are idle; a flit leaving through one is an
// error.
//
// Every flit is checked when it is ejected: a head names its source and sequence number (the
// header's src field, and the sequence number in the head's data bits above the header); each
// payload word encodes (source, sequence, flit index); a packet must arrive whole, at the tile
// it was sent to, once, unpoisoned, with head/tail flags where its length puts them.
//
// Output: "key value" lines on stdout; errors on stderr (the first few) and counted in
// "errors". Exit code 0 even with errors (the caller reads the count), 2 for bad usage.

#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <deque>
#include <map>
#include <string>
#include <vector>
#include <verilated.h>
#include "Vnoc_mesh.h"
#include "mesh_ports.h"

static const int N = MESH_X * MESH_Y;

// ---- random numbers: xoshiro256** seeded by splitmix64 -------------------------------------
static uint64_t rng_s[4];
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t next_u64() {
    const uint64_t result = rotl(rng_s[1] * 5, 7) * 9, t = rng_s[1] << 17;
    rng_s[2] ^= rng_s[0]; rng_s[3] ^= rng_s[1]; rng_s[1] ^= rng_s[2]; rng_s[0] ^= rng_s[3];
    rng_s[2] ^= t; rng_s[3] = rotl(rng_s[3], 45);
    return result;
}
static void seed_rng(uint64_t seed) {
    for (auto &s : rng_s) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        s = z ^ (z >> 31);
    }
}
static inline uint32_t uniform(uint32_t n) { return (uint32_t)(((next_u64() >> 32) * n) >> 32); }
static inline uint64_t threshold(double p) {  // Bernoulli(p) is next_u64() < threshold(p)
    if (p <= 0) return 0;
    if (p >= 1) return UINT64_MAX;
    return (uint64_t)(p * 18446744073709551616.0);
}

// ---- flits -----------------------------------------------------------------------------------
static inline void put_bits(WData *w, int off, int width, uint64_t v) {
    for (int b = 0; b < width; b++)
        if ((v >> b) & 1) w[(off + b) / 32] |= 1u << ((off + b) % 32);
}
static inline uint64_t get_bits(const WData *w, int off, int width) {
    uint64_t v = 0;
    for (int b = 0; b < width; b++) v |= (uint64_t)((w[(off + b) / 32] >> ((off + b) % 32)) & 1) << b;
    return v;
}
static inline uint64_t field(uint64_t data, int off, int width) {
    return (data >> off) & ((width >= 64) ? ~0ULL : ((1ULL << width) - 1));
}
static const uint64_t SEQ_MASK = (HEAD_SEQ_BITS >= 64) ? ~0ULL : ((1ULL << HEAD_SEQ_BITS) - 1);

// Payload word k (1-based) of packet `seq` from tile `src`.
static inline uint64_t payload_word(uint32_t src, uint64_t seq, uint32_t k) {
    return (0xA5ULL << 56) | ((uint64_t)(src & 0xFF) << 48) | ((seq & 0xFFFFFFFFFFULL) << 8) | (k & 0xFF);
}

struct Packet {
    uint32_t create, inject = 0, tid = 0;
    uint8_t dst_x, dst_y, last_x, last_y;   // field coordinates
    uint8_t length;                          // flits after the head
    bool multicast = false, measured = false, delivered = false, sent = false;
};

struct Sink {
    bool open = false;
    uint32_t src = 0, seq = 0, k = 0, length = 0;
    bool pending_credit = false;
    int outstanding = 0;  // flits held in the modelled receiver buffer (credits not yet returned)
};

static uint64_t errors = 0;
static void error(uint64_t cycle, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void error(uint64_t cycle, const char *fmt, ...) {
    if (errors++ < 20) {
        va_list ap; va_start(ap, fmt);
        fprintf(stderr, "error at cycle %" PRIu64 ": ", cycle);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
}

static std::map<std::string, std::string> parse_args(int argc, char **argv) {
    std::map<std::string, std::string> a;
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (!eq) { fprintf(stderr, "bad argument %s (want key=value)\n", argv[i]); exit(2); }
        a[std::string(argv[i], eq - argv[i])] = eq + 1;
    }
    return a;
}

struct Histogram {
    std::vector<uint64_t> bins; uint64_t count = 0; double sum = 0; uint64_t max = 0;
    void add(uint64_t v) {
        if (v >= bins.size()) bins.resize(v + 1 + v / 2, 0);
        bins[v]++; count++; sum += v; if (v > max) max = v;
    }
    double quantile(double q) const {  // smallest v with CDF(v) >= q
        if (!count) return -1;
        uint64_t need = (uint64_t)(q * count); if (need < 1) need = 1;
        uint64_t acc = 0;
        for (size_t v = 0; v < bins.size(); v++) { acc += bins[v]; if (acc >= need) return (double)v; }
        return (double)max;
    }
    double median() const {  // for an even count, the mean of the two middle values
        if (!count) return -1;
        uint64_t lo = (count + 1) / 2, hi = count / 2 + 1, acc = 0; double a = -1, b = -1;
        for (size_t v = 0; v < bins.size(); v++) {
            acc += bins[v];
            if (a < 0 && acc >= lo) a = (double)v;
            if (b < 0 && acc >= hi) { b = (double)v; break; }
        }
        return (a + b) / 2;
    }
};

int main(int argc, char **argv) {
    auto args = parse_args(argc, argv);
    auto get = [&](const char *k, const char *dflt) {
        auto it = args.find(k); return it == args.end() ? std::string(dflt) : it->second;
    };
    const std::string mode = get("mode", "synthetic");
    const std::string pattern = get("pattern", "uniform");
    const double rate = atof(get("rate", "0.1").c_str());          // offered flits/node/cycle
    const int length = atoi(get("length", "1").c_str());           // flits per packet
    const uint64_t warmup = strtoull(get("warmup", "1000").c_str(), nullptr, 10);
    const uint64_t measure = strtoull(get("measure", "10000").c_str(), nullptr, 10);
    const uint64_t drain_cap = strtoull(get("drain", "20000").c_str(), nullptr, 10);
    const uint64_t flush_cap = strtoull(get("flush", "200000").c_str(), nullptr, 10);
    const uint64_t watchdog = strtoull(get("watchdog", "5000").c_str(), nullptr, 10);
    const int hotspot = atoi(get("hotspot", "0").c_str());
    // Deliberate faults, to show that the checks fire: "payload" flips a bit of the 10th body
    // flit sent; "misroute" sends the 10th packet to the tile after the one it records.
    const std::string fault = get("fault", "none");
    uint64_t body_flits_sent = 0, heads_sent = 0;
    const double hot_fraction = atof(get("hot_fraction", "0").c_str());
    seed_rng(strtoull(get("seed", "1").c_str(), nullptr, 10));
    if (length < 1 || length > 256) { fprintf(stderr, "length must be 1..256\n"); return 2; }

    std::vector<int> perm(N, -1);
    if (pattern == "perm") {
        std::string s = get("perm", "");
        size_t pos = 0;
        for (int i = 0; i < N; i++) {
            size_t end = s.find(',', pos);
            perm[i] = atoi(s.substr(pos, end - pos).c_str());
            if (perm[i] < 0 || perm[i] >= N) { fprintf(stderr, "bad perm\n"); return 2; }
            pos = end == std::string::npos ? s.size() : end + 1;
        }
    } else if (pattern != "uniform" && pattern != "hotspot") {
        fprintf(stderr, "unknown pattern %s\n", pattern.c_str()); return 2;
    }

    // Scripted packets (mode=trace): "cycle src dst_x dst_y last_x last_y multicast length".
    struct Scripted { uint64_t cycle; int src, dx, dy, lx, ly, mc, len; };
    std::vector<Scripted> script;
    if (mode == "trace") {
        FILE *f = fopen(get("file", "").c_str(), "r");
        if (!f) { fprintf(stderr, "cannot read trace file\n"); return 2; }
        Scripted p;
        while (fscanf(f, "%" SCNu64 " %d %d %d %d %d %d %d", &p.cycle, &p.src, &p.dx, &p.dy, &p.lx,
                      &p.ly, &p.mc, &p.len) == 8) script.push_back(p);
        fclose(f);
    } else if (mode != "synthetic") {
        fprintf(stderr, "unknown mode %s\n", mode.c_str()); return 2;
    }

    VerilatedContext context;
    Vnoc_mesh top{&context};
    MeshPorts ports;
    bind_ports(top, ports);
    top.clk = 0; top.rst = 1;
    for (int i = 0; i < N; i++) { *ports.in_valid[i] = 0; *ports.out_credit[i] = 0; }
    for (auto *v : ports.edge_in_valid) *v = 0;
    for (auto *c : ports.edge_out_credit) *c = 0;
    top.eval();
    for (int k = 0; k < 2; k++) { top.clk = 1; top.eval(); top.clk = 0; top.eval(); }
    top.rst = 0; top.eval();

    std::vector<std::vector<Packet>> packets(N);
    std::vector<std::deque<uint32_t>> queue(N);
    std::vector<uint32_t> next_flit(N, 0);
    std::vector<int> credits(N, DEPTH);
    std::vector<Sink> sinks(N);
    std::vector<uint64_t> flow_sent(N * N, 0), flow_recv(N * N, 0);
    Histogram packet_latency, network_latency, flit_latency;
    uint64_t created = 0, delivered = 0, measured_created = 0, measured_delivered = 0;
    uint64_t offered_flits = 0, accepted_flits = 0, max_queue = 0, deliveries = 0;
    const uint64_t p_threshold = threshold(rate / length), hot_threshold = threshold(hot_fraction);
    const uint64_t window_end = warmup + measure;
    size_t next_scripted = 0;
    bool generating = mode == "synthetic", unstable = false, deadlock = false, flushed = false;
    uint64_t last_progress = 0, cycle = 0, drain_end = 0;
    std::vector<std::string> trace_out;

    auto create = [&](int src, int dx, int dy, int lx, int ly, bool mc, int len, bool measured,
                      uint32_t tid) {
        Packet p;
        p.create = (uint32_t)cycle; p.tid = tid;
        p.dst_x = dx; p.dst_y = dy; p.last_x = lx; p.last_y = ly; p.multicast = mc;
        p.length = (uint8_t)len; p.measured = measured;
        queue[src].push_back((uint32_t)packets[src].size());
        packets[src].push_back(p);
        created++;
        if (measured) measured_created++;
        if (queue[src].size() > max_queue) max_queue = queue[src].size();
    };

    auto head_flit = [&](int src, uint32_t seq, const Packet &p) {
        uint64_t h = 0;
        h |= (uint64_t)p.dst_x << HDR_DST_X_OFF; h |= (uint64_t)p.dst_y << HDR_DST_Y_OFF;
        h |= (uint64_t)p.last_x << HDR_LAST_X_OFF; h |= (uint64_t)p.last_y << HDR_LAST_Y_OFF;
        h |= (uint64_t)(src % MESH_X + 1) << HDR_SRC_X_OFF;
        h |= (uint64_t)(src / MESH_X + 1) << HDR_SRC_Y_OFF;
        h |= (uint64_t)p.multicast << HDR_MULTICAST_OFF;
        h |= (uint64_t)p.length << HDR_LENGTH_OFF;
        h |= ((uint64_t)seq & SEQ_MASK) << HEADER_WIDTH;
        return h;
    };

    auto in_rectangle = [](const Packet &p, int tile) {
        int fx = tile % MESH_X + 1, fy = tile / MESH_X + 1;
        if (!p.multicast) return fx == p.dst_x && fy == p.dst_y;
        return p.dst_x <= fx && fx <= p.last_x && p.dst_y <= fy && fy <= p.last_y;
    };

    auto start = std::chrono::steady_clock::now();
    while (true) {
        const bool in_window = cycle >= warmup && cycle < window_end;
        // ---- generation ------------------------------------------------------------------
        if (mode == "synthetic" && generating) {
            for (int s = 0; s < N; s++) {
                if (next_u64() >= p_threshold) continue;
                int d;
                if (pattern == "perm") d = perm[s];
                else if (pattern == "hotspot" && next_u64() < hot_threshold) d = hotspot;
                else d = (int)uniform(N);
                create(s, d % MESH_X + 1, d / MESH_X + 1, d % MESH_X + 1, d / MESH_X + 1, false,
                       length - 1, in_window, 0);
                if (in_window) { offered_flits += length; flow_sent[s * N + d] += length; }
            }
        }
        while (next_scripted < script.size() && script[next_scripted].cycle == cycle) {
            const Scripted &p = script[next_scripted];
            create(p.src, p.dx, p.dy, p.lx, p.ly, p.mc != 0, p.len, true, (uint32_t)next_scripted);
            next_scripted++;
        }
        // ---- injection -------------------------------------------------------------------
        for (int s = 0; s < N; s++) {
            WData *w = ports.in_flit[s];
            if (credits[s] > 0 && !queue[s].empty()) {
                const uint32_t seq = queue[s].front();
                Packet &p = packets[s][seq];
                for (int i = 0; i < FLIT_WORDS; i++) w[i] = 0;
                const uint32_t k = next_flit[s];
                uint64_t data = k == 0 ? head_flit(s, seq, p) : payload_word(s, seq, k);
                if (k == 0 && fault == "misroute" && ++heads_sent == 10) {
                    const int d = ((p.dst_y - 1) * MESH_X + p.dst_x) % N;  // next tile
                    data &= ~(((1ULL << HDR_DST_X_W) - 1) << HDR_DST_X_OFF);
                    data &= ~(((1ULL << HDR_DST_Y_W) - 1) << HDR_DST_Y_OFF);
                    data |= (uint64_t)(d % MESH_X + 1) << HDR_DST_X_OFF;
                    data |= (uint64_t)(d / MESH_X + 1) << HDR_DST_Y_OFF;
                }
                if (k != 0 && fault == "payload" && ++body_flits_sent == 10) data ^= 1ULL << 20;
                put_bits(w, 0, FLIT_WIDTH < 64 ? FLIT_WIDTH : 64, data);
                put_bits(w, FLIT_WIDTH, 1, k == 0);
                put_bits(w, FLIT_WIDTH + 1, 1, k == p.length);
                *ports.in_valid[s] = 1;
                credits[s]--;
                if (k == 0) { p.inject = (uint32_t)cycle; p.sent = true; }
                if (k == p.length) { queue[s].pop_front(); next_flit[s] = 0; }
                else next_flit[s] = k + 1;
            } else {
                *ports.in_valid[s] = 0;
            }
        }
        for (int d = 0; d < N; d++) {
            *ports.out_credit[d] = sinks[d].pending_credit;
            if (sinks[d].pending_credit) sinks[d].outstanding--;
            sinks[d].pending_credit = false;
        }
        top.eval();
        // ---- credits back to the sources, flits out to the sinks -------------------------
        for (int s = 0; s < N; s++) {
            if (*ports.in_credit[s] && ++credits[s] > DEPTH)
                error(cycle, "tile %d: router returned more credits than flits sent", s);
        }
        for (int d = 0; d < N; d++) {
            if (!*ports.out_valid[d]) continue;
            Sink &k = sinks[d];
            if (k.outstanding >= DEPTH) error(cycle, "tile %d: flit arrived at a full receiver", d);
            k.outstanding++;
            k.pending_credit = true;
            last_progress = cycle;
            if (in_window) accepted_flits++;
            const WData *w = ports.out_flit[d];
            const uint64_t data = get_bits(w, 0, FLIT_WIDTH < 64 ? FLIT_WIDTH : 64);
            const bool head = get_bits(w, FLIT_WIDTH, 1), tail = get_bits(w, FLIT_WIDTH + 1, 1);
            const bool poison = get_bits(w, FLIT_WIDTH + 2, 1);
            if (poison) error(cycle, "tile %d: poisoned flit", d);
            if (!k.open) {
                if (!head) { error(cycle, "tile %d: body flit outside a packet", d); continue; }
                const int sx = (int)field(data, HDR_SRC_X_OFF, HDR_SRC_X_W) - 1;
                const int sy = (int)field(data, HDR_SRC_Y_OFF, HDR_SRC_Y_W) - 1;
                const uint64_t seq_bits = field(data, HEADER_WIDTH, HEAD_SEQ_BITS);
                if (sx < 0 || sx >= MESH_X || sy < 0 || sy >= MESH_Y) {
                    error(cycle, "tile %d: head from unknown source (%d, %d)", d, sx, sy); continue;
                }
                const int src = sy * MESH_X + sx;
                // Sequence numbers are the low bits of the index; recover the full index as the
                // newest packet of that source with those low bits (the window is far larger
                // than any packet's lifetime).
                uint64_t total = packets[src].size();
                if (total == 0) { error(cycle, "tile %d: head from %d, which sent nothing", d, src); continue; }
                uint64_t seq = ((total - 1) & ~SEQ_MASK) | seq_bits;
                if (seq >= total) {
                    if (seq <= SEQ_MASK) {
                        error(cycle, "tile %d: head of packet %d/%" PRIu64 ", never created", d, src, seq);
                        continue;
                    }
                    seq -= SEQ_MASK + 1;
                }
                Packet &p = packets[src][seq];
                if (!p.sent) {
                    error(cycle, "tile %d: packet %d/%" PRIu64 " arrived before it was sent", d, src, seq);
                    continue;
                }
                if (!in_rectangle(p, d)) {
                    error(cycle, "tile %d: packet %d/%" PRIu64 " for (%d, %d) delivered here", d, src,
                          seq, p.dst_x - 1, p.dst_y - 1);
                }
                if ((int)field(data, HDR_LENGTH_OFF, HDR_LENGTH_W) != p.length ||
                    (int)field(data, HDR_DST_X_OFF, HDR_DST_X_W) != p.dst_x ||
                    (int)field(data, HDR_DST_Y_OFF, HDR_DST_Y_W) != p.dst_y ||
                    (int)field(data, HDR_MULTICAST_OFF, HDR_MULTICAST_W) != (int)p.multicast) {
                    error(cycle, "tile %d: header of packet %d/%" PRIu64 " corrupted", d, src, seq);
                }
                k.src = src; k.seq = (uint32_t)seq; k.k = 0; k.length = p.length; k.open = true;
            } else {
                k.k++;
                if (head) error(cycle, "tile %d: head flit inside packet %u/%u", d, k.src, k.seq);
                if (data != payload_word(k.src, k.seq, k.k))
                    error(cycle, "tile %d: packet %u/%u flit %u carries %016" PRIx64 ", not %016" PRIx64,
                          d, k.src, k.seq, k.k, data, payload_word(k.src, k.seq, k.k));
            }
            Packet &p = packets[k.src][k.seq];
            if (in_window) {
                flit_latency.add(cycle - p.create);
                flow_recv[k.src * N + d]++;
            }
            if (tail != (k.k == k.length))
                error(cycle, "tile %d: packet %u/%u: tail flag %d on flit %u of %u", d, k.src, k.seq,
                      tail, k.k, k.length + 1);
            if (k.k == k.length) {
                k.open = false;
                deliveries++;
                if (mode == "trace") {
                    char line[96];
                    snprintf(line, sizeof line, "D %u %d %u %" PRIu64, p.tid, d, p.inject, cycle);
                    trace_out.push_back(line);
                } else if (p.delivered) {
                    error(cycle, "tile %d: packet %u/%u delivered twice", d, k.src, k.seq);
                }
                if (!p.delivered) {
                    p.delivered = true;
                    delivered++;
                    if (p.measured) {
                        measured_delivered++;
                        packet_latency.add(cycle - p.create);
                        network_latency.add(cycle - p.inject);
                    }
                }
            }
        }
        for (auto *v : ports.edge_out_valid)
            if (*v) error(cycle, "a flit left the mesh through an edge port");
        if (read_malformed(top)) { error(cycle, "a router flagged a malformed packet"); break; }
        top.clk = 1; top.eval(); top.clk = 0;
        if (context.gotFinish()) { error(cycle, "simulation stopped (an RTL assertion failed?)"); break; }
        cycle++;

        // ---- phases ------------------------------------------------------------------------
        if (mode == "synthetic") {
            if (generating && cycle >= window_end &&
                (measured_delivered == measured_created || cycle >= window_end + drain_cap)) {
                unstable = measured_delivered != measured_created;
                generating = false;
                drain_end = cycle;
            }
            if (!generating && delivered == created) { flushed = true; break; }
            if (!generating && cycle >= drain_end + flush_cap) break;
        } else {
            if (next_scripted == script.size() && delivered == created && cycle > last_progress + 1000) {
                flushed = true; break;
            }
        }
        if (created > delivered && cycle > last_progress + watchdog) {
            bool queued = false;
            for (int s = 0; s < N; s++) queued |= !queue[s].empty() && credits[s] > 0;
            deadlock = true;
            error(cycle, "no flit ejected for %" PRIu64 " cycles with %" PRIu64 " packets outstanding%s",
                  watchdog, created - delivered, queued ? " (sources hold credits)" : "");
            break;
        }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    top.final();

    double min_flow = 1e9;
    for (int s = 0; s < N; s++)
        for (int d = 0; d < N; d++)
            if (flow_sent[s * N + d]) {
                double r = (double)flow_recv[s * N + d] / flow_sent[s * N + d];
                if (r < min_flow) min_flow = r;
            }
    double min_source = 1e9;
    for (int s = 0; s < N; s++) {
        uint64_t sent = 0, recv = 0;
        for (int d = 0; d < N; d++) { sent += flow_sent[s * N + d]; recv += flow_recv[s * N + d]; }
        if (sent && (double)recv / sent < min_source) min_source = (double)recv / sent;
    }
    const double node_cycles = (double)N * measure;
    printf("cycles %" PRIu64 "\n", cycle);
    printf("seconds %.3f\n", seconds);
    printf("created %" PRIu64 "\ndelivered %" PRIu64 "\ndeliveries %" PRIu64 "\n", created, delivered, deliveries);
    printf("measured_created %" PRIu64 "\nmeasured_delivered %" PRIu64 "\n", measured_created, measured_delivered);
    printf("offered %.6f\naccepted %.6f\n", offered_flits / node_cycles, accepted_flits / node_cycles);
    printf("latency_mean %.4f\nlatency_median %.1f\nlatency_p99 %.1f\nlatency_max %" PRIu64 "\n",
           packet_latency.count ? packet_latency.sum / packet_latency.count : -1.0,
           packet_latency.median(), packet_latency.quantile(0.99), packet_latency.max);
    printf("network_latency_mean %.4f\n",
           network_latency.count ? network_latency.sum / network_latency.count : -1.0);
    printf("flit_latency_median %.1f\nflit_latency_max %" PRIu64 "\n", flit_latency.median(), flit_latency.max);
    printf("min_flow_ratio %.6f\n", min_flow > 1e8 ? -1.0 : min_flow);
    printf("min_source_ratio %.6f\n", min_source > 1e8 ? -1.0 : min_source);
    printf("max_queue %" PRIu64 "\n", max_queue);
    printf("unstable %d\nflushed %d\ndeadlock %d\n", unstable, flushed, deadlock);
    printf("errors %" PRIu64 "\n", errors);
    for (auto &line : trace_out) printf("%s\n", line.c_str());
    return 0;
}
