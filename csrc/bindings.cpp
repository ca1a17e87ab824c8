// The one binding file: simsearch._core. Python (simsearch/index/) validates
// and converts every input; this layer checks shapes, sizes and the rows the
// core cannot take (non-finite, unnormalizable, overflowing), runs all C++
// work with the GIL released and maps C++ errors to simsearch's typed errors.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <signal.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <memory>
#include <shared_mutex>

#include "compaction.hpp"
#include "graph.hpp"
#include "load.hpp"
#include "kernels/dispatch.hpp"

namespace nb = nanobind;
using namespace simsearch;

namespace {

using FloatMatrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatVector = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using IdVector = nb::ndarray<const uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8Vector = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I8Vector = nb::ndarray<const int8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32Vector = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::unique_ptr<T[]> data, std::initializer_list<size_t> shape) {
    T* raw = data.release();
    nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<T*>(p); });
    return nb::ndarray<nb::numpy, T>(raw, shape.size(), shape.begin(), owner);
}

// ---- Ctrl-C ----------------------------------------------------------------
// Long calls poll for a pending SIGINT between chunks of work, without the
// GIL: they run with the index lock held, and taking the GIL there would
// deadlock against a Python thread that holds the GIL and waits for the lock
// (the rule of this file: release the GIL, then lock; never the reverse).
// A chained SIGINT handler counts the signals and passes each on to the
// handler that was there (Python's), so Python still raises
// KeyboardInterrupt afterwards. Only the main thread is interruptible, as in
// Python itself.
std::atomic<uint64_t> g_sigints{0};
struct sigaction g_prev_sigint;

void on_sigint(int sig, siginfo_t* info, void* ctx) {
    g_sigints.fetch_add(1, std::memory_order_relaxed);
    if (g_prev_sigint.sa_flags & SA_SIGINFO) {
        if (g_prev_sigint.sa_sigaction) g_prev_sigint.sa_sigaction(sig, info, ctx);
    } else if (g_prev_sigint.sa_handler != SIG_DFL && g_prev_sigint.sa_handler != SIG_IGN) {
        g_prev_sigint.sa_handler(sig);
    }
}

// Called with the GIL held, which serializes it. Re-chains after a
// signal.signal() call replaced the hook.
void hook_sigint() {
    struct sigaction cur;
    if (::sigaction(SIGINT, nullptr, &cur) != 0) return;
    if (cur.sa_flags & SA_SIGINFO) {
        if (cur.sa_sigaction == on_sigint) return;
    } else if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN) {
        return;  // nobody turns SIGINT into KeyboardInterrupt: nothing to poll
    }
    g_prev_sigint = cur;
    struct sigaction mine = cur;
    mine.sa_sigaction = on_sigint;
    mine.sa_flags = cur.sa_flags | SA_SIGINFO;
    ::sigaction(SIGINT, &mine, nullptr);
}

bool on_main_thread() {
    static const unsigned long main_ident =
        nb::cast<unsigned long>(nb::module_::import_("threading").attr("main_thread")().attr("ident"));
    return PyThread_get_thread_ident() == main_ident;
}

// Polled by the calling thread between chunks of work: true once a SIGINT
// arrived after the call began. Built with the GIL held; runs without it.
CancelCheck python_cancel() {
    if (!on_main_thread()) return nullptr;
    hook_sigint();
    const uint64_t start = g_sigints.load(std::memory_order_relaxed);
    return [start]() { return g_sigints.load(std::memory_order_relaxed) != start; };
}

// With the GIL held again: run Python's handler (KeyboardInterrupt).
[[noreturn]] void raise_interrupt() {
    if (PyErr_CheckSignals() == 0) PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw nb::python_error();
}

// ---- input rows ----------------------------------------------------------------
struct DimensionMismatch : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

void check_dim(const char* what, size_t got, size_t want) {
    if (got != want)
        throw DimensionMismatch(std::string(what) + " has dimension " + std::to_string(got) + ", the index has " +
                                std::to_string(want));
}

std::string fmt(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// Rows as the index stores and searches them. All must be finite. Cosine:
// a unit-normalized copy (the caller's array is never modified), computed in
// double so a tiny norm cannot overflow the scale; a norm that is zero or
// subnormal in float32 is refused. Inner product and L2: the rows as they
// are, refused when so large that the quantized inner products and squared
// norms (sums of up to dim products) could overflow float32 into inf/NaN.
const float* prepare_rows(const float* x, size_t n, size_t dim, Metric metric, const char* what,
                          std::vector<float>& buf) {
    const double max_norm2 = double(FLT_MAX) / (64.0 * double(dim));
    if (metric == Metric::Cosine) buf.resize(n * dim);
    for (size_t i = 0; i < n; ++i) {
        const float* row = x + i * dim;
        double s = 0;
        for (size_t d = 0; d < dim; ++d) s += double(row[d]) * row[d];
        auto which = [&] { return std::string(what) + " row " + std::to_string(i); };  // only for errors
        if (!std::isfinite(s)) {
            for (size_t d = 0; d < dim; ++d)
                if (!std::isfinite(row[d])) throw std::invalid_argument(which() + " contains NaN or infinity");
        }
        if (metric == Metric::Cosine) {
            const double norm = std::sqrt(s);
            if (!(norm >= double(FLT_MIN)))
                throw std::invalid_argument(which() + (norm > 0 ? " has norm " + fmt(norm) + ", too small to normalize (subnormal in float32)"
                                                              : std::string(" has zero norm; cosine is undefined for it")));
            for (size_t d = 0; d < dim; ++d) buf[i * dim + d] = float(double(row[d]) / norm);
        } else if (!(s <= max_norm2)) {
            throw std::invalid_argument(which() + " has norm " + fmt(std::sqrt(s)) + ", too large: scores would overflow float32 (at most " +
                                        fmt(std::sqrt(max_norm2)) + " at dimension " + std::to_string(dim) + "); scale the vectors down");
        }
    }
    return metric == Metric::Cosine ? buf.data() : x;
}

// The most neighbours one search may ask for (simsearch._validation.MAX_K):
// larger is refused before the output arrays are allocated.
constexpr size_t kMaxK = size_t(1) << 24;

struct NativeIndex {
    std::unique_ptr<HnswIndex> ix;
    // compact() swaps `ix` for a rebuilt index: every call reads under this
    // lock. Locking rule: every call releases the GIL first, then takes this
    // lock (and the index's own), and takes the GIL back only after both are
    // released. A thread holding the GIL therefore never waits for a lock,
    // and a thread holding a lock never waits for the GIL: no deadlock
    // between Python threads, whatever they call.
    std::unique_ptr<std::shared_mutex> swap_mu = std::make_unique<std::shared_mutex>();

    // fn(index) with the GIL released and the swap lock shared; a Ctrl-C
    // seen by fn's polls surfaces as KeyboardInterrupt once the GIL is back.
    template <class Fn>
    auto with_index(Fn fn) const {
        try {
            nb::gil_scoped_release release;
            std::shared_lock<std::shared_mutex> g(*swap_mu);
            return fn(*ix);
        } catch (const Interrupted&) {
            raise_interrupt();
        }
    }

    NativeIndex(size_t dim, uint32_t metric, size_t M, size_t ef_construction, bool keep_floats, const std::string& isa,
                uint64_t seed, size_t train_limit) {
        if (metric > 2) throw std::invalid_argument("metric must be 0 (cosine), 1 (ip) or 2 (l2)");
        IndexParams p;
        p.dim = dim;
        p.metric = Metric(metric);
        p.M = M;
        p.ef_construction = ef_construction;
        p.keep_floats = keep_floats;
        p.seed = seed;
        p.train_limit = std::max<size_t>(1, train_limit);
        ix = std::make_unique<HnswIndex>(p, isa);
    }
    explicit NativeIndex(std::unique_ptr<HnswIndex> p) : ix(std::move(p)) {}

    void add(FloatMatrix x, IdVector ids, size_t num_threads, const std::vector<std::string>& attr_names,
             const std::vector<I32Vector>& attr_values) {
        if (ids.shape(0) != x.shape(0)) throw std::invalid_argument("ids and vectors differ in length");
        std::vector<const int32_t*> values;
        for (const auto& v : attr_values) {
            if (v.shape(0) != x.shape(0)) throw std::invalid_argument("an attribute array and vectors differ in length");
            values.push_back(v.data());
        }
        const CancelCheck cancel = python_cancel();
        with_index([&](HnswIndex& ix) {
            check_dim("vectors", x.shape(1), ix.dim());
            std::vector<float> buf;
            const float* rows = prepare_rows(x.data(), x.shape(0), ix.dim(), ix.params().metric, "vectors", buf);
            ix.add(rows, ids.data(), x.shape(0), num_threads, cancel, attr_names, values);
        });
    }

    nb::tuple search_filtered(FloatMatrix q, size_t k, size_t ef, bool rescore, size_t num_threads,
                              std::optional<IdVector> allowed,
                              const std::vector<std::pair<std::string, std::vector<int32_t>>>& conditions,
                              double brute_fraction, double walk_cost) {
        return run_search(q, k, [&](HnswIndex& ix, const float* rows, size_t n, uint64_t* ids, float* scores,
                                    const CancelCheck& cancel) {
            ix.search_filtered(rows, n, k, ef, rescore, num_threads, allowed ? allowed->data() : nullptr,
                               allowed ? allowed->shape(0) : 0, allowed.has_value(), conditions, brute_fraction,
                               walk_cost, ids, scores, cancel);
        });
    }

    void compact(size_t num_threads) {
        nb::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> w(*swap_mu);
        ix = compacted(*ix, num_threads);
    }

    nb::tuple search(FloatMatrix q, size_t k, size_t ef, bool rescore, size_t num_threads, bool exact) {
        return run_search(q, k, [&](HnswIndex& ix, const float* rows, size_t n, uint64_t* ids, float* scores,
                                    const CancelCheck& cancel) {
            if (exact) ix.search_exact(rows, n, k, rescore, num_threads, ids, scores, cancel);
            else ix.search(rows, n, k, ef, rescore, num_threads, ids, scores, cancel);
        });
    }

    // The part every search shares: checks, output arrays, cosine
    // normalization and the search itself with the GIL released.
    template <class Fn>
    nb::tuple run_search(FloatMatrix q, size_t k, const Fn& fn) {
        if (k == 0) throw std::invalid_argument("k must be positive");
        if (k > kMaxK)
            throw std::invalid_argument("k=" + std::to_string(k) + " is too large; at most " + std::to_string(kMaxK) +
                                        " neighbours can be asked for");
        const size_t n = q.shape(0);
        size_t nk;
        if (__builtin_mul_overflow(n, k, &nk) || nk > (size_t(1) << 60) / 8)
            throw std::invalid_argument("queries x k = " + std::to_string(n) + " x " + std::to_string(k) +
                                        " results do not fit in memory");
        const CancelCheck cancel = python_cancel();
        std::unique_ptr<uint64_t[]> ids;
        std::unique_ptr<float[]> scores;
        with_index([&](HnswIndex& ix) {
            check_dim("queries", q.shape(1), ix.dim());
            ids.reset(new uint64_t[nk]);
            scores.reset(new float[nk]);
            std::vector<float> buf;
            const float* rows = prepare_rows(q.data(), n, ix.dim(), ix.params().metric, "queries", buf);
            fn(ix, rows, n, ids.get(), scores.get(), cancel);
        });
        return nb::make_tuple(to_numpy(std::move(ids), {n, k}), to_numpy(std::move(scores), {n, k}));
    }

    void remove(IdVector ids) {
        with_index([&](HnswIndex& ix) { ix.remove(ids.data(), ids.shape(0)); });
    }

    nb::ndarray<nb::numpy, bool> contains(IdVector ids) {
        const size_t n = ids.shape(0);
        std::unique_ptr<bool[]> out(new bool[n]);
        with_index([&](HnswIndex& ix) { ix.contains(ids.data(), n, out.get()); });
        return to_numpy(std::move(out), {n});
    }

    nb::ndarray<nb::numpy, float> get_vectors(IdVector ids) {
        const size_t n = ids.shape(0);
        std::unique_ptr<float[]> out;
        const size_t dim = ix_dim();
        with_index([&](HnswIndex& ix) {
            out.reset(new float[n * dim]);
            ix.get_vectors(ids.data(), n, out.get());
        });
        return to_numpy(std::move(out), {n, dim});
    }

    nb::ndarray<nb::numpy, uint64_t> ids() {
        std::vector<uint64_t> v = with_index([](HnswIndex& ix) { return ix.ids(); });
        std::unique_ptr<uint64_t[]> out(new uint64_t[v.size()]);
        std::copy(v.begin(), v.end(), out.get());
        return to_numpy(std::move(out), {v.size()});
    }

    nb::ndarray<nb::numpy, float> quantizer_param(bool step) {
        std::vector<float> v = with_index([&](HnswIndex& ix) { return step ? ix.quantizer_step() : ix.quantizer_lo(); });
        std::unique_ptr<float[]> out(new float[v.size()]);
        std::copy(v.begin(), v.end(), out.get());
        return to_numpy(std::move(out), {v.size()});
    }

    void set_quantizer(FloatVector lo, FloatVector step) {
        with_index([&](HnswIndex& ix) {
            if (lo.shape(0) != ix.dim() || step.shape(0) != ix.dim())
                throw DimensionMismatch("quantizer lo and step have lengths " + std::to_string(lo.shape(0)) + " and " +
                                        std::to_string(step.shape(0)) + ", the index has dimension " + std::to_string(ix.dim()));
            ix.set_quantizer(lo.data(), step.data());
        });
    }

    void save(const std::string& path) {
        with_index([&](HnswIndex& ix) { ix.save(path); });
    }

    static NativeIndex load(const std::string& path, bool mmap, bool verify, const std::string& isa) {
        std::unique_ptr<HnswIndex> p;
        {
            nb::gil_scoped_release release;
            p = HnswIndex::load(path, mmap, verify, isa);
        }
        return NativeIndex(std::move(p));
    }

    // dim never changes (compaction keeps it).
    size_t ix_dim() const { return with_index([](HnswIndex& ix) { return ix.dim(); }); }
};

// A read-only property: fn(index) under the locking rule.
template <class Fn>
auto prop(Fn fn) {
    return [fn](const NativeIndex& s) { return s.with_index(fn); };
}

// Kernel entry points for tests: each ISA against the scalar reference at
// any dimension (codes are zero-padded here as the index pads them).
int64_t kernel_dot_u8s8(const std::string& isa, U8Vector codes, I8Vector query) {
    if (codes.shape(0) != query.shape(0)) throw std::invalid_argument("codes and query differ in length");
    const Kernels k = select_kernels(isa);
    const size_t n = codes.shape(0), np = padded_dim(n);
    std::vector<uint8_t> c(np, 0);
    std::vector<int8_t> q8(np, 0);
    std::vector<int16_t> q16(np, 0);
    for (size_t i = 0; i < n; ++i) {
        c[i] = codes.data()[i];
        q8[i] = query.data()[i];
        q16[i] = query.data()[i];
    }
    return k.dot_u8s8(c.data(), q8.data(), q16.data(), np);
}

float kernel_f32(const std::string& isa, FloatVector a, FloatVector b, bool l2) {
    if (a.shape(0) != b.shape(0)) throw std::invalid_argument("a and b differ in length");
    const Kernels k = select_kernels(isa);
    return l2 ? k.l2sq_f32(a.data(), b.data(), a.shape(0)) : k.dot_f32(a.data(), b.data(), a.shape(0));
}


// Quantizer ranges learned from x as the index learns them (cosine rows
// normalized first), for installing in several indexes with set_quantizer.
nb::tuple train_quantizer(FloatMatrix x, uint32_t metric) {
    if (metric > 2) throw std::invalid_argument("metric must be 0 (cosine), 1 (ip) or 2 (l2)");
    const size_t n = x.shape(0), dim = x.shape(1);
    if (n == 0 || dim == 0) throw std::invalid_argument("train_quantizer needs at least one vector of positive dimension");
    Quantizer q(dim);
    {
        nb::gil_scoped_release release;
        std::vector<float> buf;
        const float* rows = prepare_rows(x.data(), n, dim, Metric(metric), "vectors", buf);
        q.train(n, [&](size_t i) { return rows + i * dim; });
    }
    auto copy = [dim](const std::vector<float>& v) {
        std::unique_ptr<float[]> out(new float[dim]);
        std::copy(v.begin(), v.end(), out.get());
        return to_numpy(std::move(out), {dim});
    };
    return nb::make_tuple(copy(q.lo()), copy(q.step()));
}

// C++ errors -> the library's typed Python errors (simsearch.errors), which
// keep their builtin bases (ValueError, KeyError); plain ValueError or
// KeyError when simsearch.errors cannot be imported.
PyObject* library_error(const char* name, PyObject* fallback) {
    PyObject* mod = PyImport_ImportModule("simsearch.errors");
    if (!mod) {
        PyErr_Clear();
        return fallback;
    }
    PyObject* type = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (!type) {
        PyErr_Clear();
        return fallback;
    }
    Py_DECREF(type);  // the module, in sys.modules, keeps it alive
    return type;
}

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "simsearch native core: int8 HNSW index and SIMD kernels (private; use simsearch.Index)";
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const simsearch::IOError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const VersionError& e) {
            PyErr_SetString(library_error("FormatVersionError", PyExc_ValueError), e.what());
        } catch (const FormatError& e) {
            PyErr_SetString(library_error("CorruptFileError", PyExc_ValueError), e.what());
        } catch (const DimensionMismatch& e) {
            PyErr_SetString(library_error("DimensionError", PyExc_ValueError), e.what());
        } catch (const DuplicateId& e) {
            PyErr_SetString(library_error("DuplicateIdError", PyExc_ValueError), e.what());
        } catch (const std::out_of_range& e) {
            PyErr_SetString(library_error("UnknownIdError", PyExc_KeyError), e.what());
        }
    });

    m.def("available_isas", &available_isas, "ISAs this CPU runs, best first.");
    m.def("known_isas", &known_isas, "ISAs compiled into this build.");
    m.def("kernel_dot_u8s8", &kernel_dot_u8s8);
    m.def("kernel_f32", &kernel_f32);
    m.def("train_quantizer", &train_quantizer, nb::arg("vectors"), nb::arg("metric"),
          "Per-dimension (lo, step) float32 ranges learned from vectors, as an index learns them.");
    m.attr("FORMAT_VERSION") = kFormatVersion;
    m.attr("MAGIC") = nb::bytes(kMagic, 8);

    nb::class_<NativeIndex>(m, "NativeIndex")
        .def(nb::init<size_t, uint32_t, size_t, size_t, bool, const std::string&, uint64_t, size_t>(), nb::arg("dim"),
             nb::arg("metric"), nb::arg("M"), nb::arg("ef_construction"), nb::arg("keep_floats"), nb::arg("isa"),
             nb::arg("seed"), nb::arg("train_limit"))
        .def("add", &NativeIndex::add)
        .def("search", &NativeIndex::search, nb::arg("queries"), nb::arg("k"), nb::arg("ef"), nb::arg("rescore"),
             nb::arg("num_threads"), nb::arg("exact") = false)
        .def("remove", &NativeIndex::remove)
        .def("contains", &NativeIndex::contains)
        .def("get_vectors", &NativeIndex::get_vectors)
        .def("ids", &NativeIndex::ids)
        .def("quantizer_param", &NativeIndex::quantizer_param)
        .def("set_quantizer", &NativeIndex::set_quantizer, nb::arg("lo"), nb::arg("step"))
        .def("save", &NativeIndex::save)
        .def_static("load", &NativeIndex::load)
        .def("set_isa", [](NativeIndex& s, const std::string& isa) { s.with_index([&](HnswIndex& ix) { ix.set_isa(isa); }); })
        .def("search_filtered", &NativeIndex::search_filtered)
        .def("compact", &NativeIndex::compact)
        .def_prop_rw(
            "ef", [](const NativeIndex& s) { return s.with_index([](HnswIndex& ix) { return ix.ef(); }); },
            [](NativeIndex& s, size_t ef) { s.with_index([&](HnswIndex& ix) { ix.set_ef(ef); }); },
            "Default search effort, saved with the index (files written before it was stored load with 64).")
        .def_prop_ro("attribute_names", prop([](HnswIndex& ix) { return ix.attribute_names(); }))
        .def_prop_ro("dim", prop([](HnswIndex& ix) { return ix.dim(); }))
        .def_prop_ro("size", prop([](HnswIndex& ix) { return ix.size(); }))
        .def_prop_ro("n_slots", prop([](HnswIndex& ix) { return ix.n_slots(); }))
        .def_prop_ro("n_deleted", prop([](HnswIndex& ix) { return ix.n_deleted(); }))
        .def_prop_ro("isa", prop([](HnswIndex& ix) { return std::string(ix.isa()); }))
        .def_prop_ro("metric", prop([](HnswIndex& ix) { return uint32_t(ix.params().metric); }))
        .def_prop_ro("M", prop([](HnswIndex& ix) { return ix.params().M; }))
        .def_prop_ro("ef_construction", prop([](HnswIndex& ix) { return ix.params().ef_construction; }))
        .def_prop_ro("keep_floats", prop([](HnswIndex& ix) { return ix.params().keep_floats; }))
        .def_prop_ro("has_floats", prop([](HnswIndex& ix) { return ix.has_floats(); }))
        .def_prop_ro("quantizer_final", prop([](HnswIndex& ix) { return ix.quantizer_final(); }))
        .def_prop_ro("next_auto_id", prop([](HnswIndex& ix) { return ix.next_auto_id(); }))
        .def_prop_ro("memory_bytes", prop([](HnswIndex& ix) { return ix.memory_bytes(); }))
        .def_prop_ro("max_level", prop([](HnswIndex& ix) { return ix.max_level(); }));
}
