// The one binding file: simsearch._core. Python (simsearch/index/core.py)
// validates and converts every input; this layer only checks shapes, releases
// the GIL around C++ work and maps C++ errors to Python exception types.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <memory>
#include <shared_mutex>

#include "graph.hpp"
#include "io.hpp"
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

// Polled by the calling thread between chunks of work, at most every 20 ms:
// a pending Ctrl-C stops the loop and surfaces as KeyboardInterrupt.
CancelCheck python_cancel() {
    auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    return [last]() {
        const auto now = std::chrono::steady_clock::now();
        if (now - *last < std::chrono::milliseconds(20)) return false;
        *last = now;
        nb::gil_scoped_acquire g;
        return PyErr_CheckSignals() != 0;
    };
}

template <class Fn>
void run_released(Fn fn) {
    try {
        nb::gil_scoped_release release;
        fn();
    } catch (const Interrupted&) {
        throw nb::python_error();
    }
}

void check_dim(const char* what, size_t got, size_t want) {
    if (got != want)
        throw std::invalid_argument(std::string(what) + " has dimension " + std::to_string(got) + ", the index has " +
                                    std::to_string(want));
}

// Cosine: unit-normalized copy of the rows (the caller's array is never
// modified). Other metrics: the rows as they are.
const float* maybe_normalize(const float* x, size_t n, size_t dim, Metric metric, const char* what,
                             std::vector<float>& buf) {
    if (metric != Metric::Cosine) return x;
    buf.resize(n * dim);
    for (size_t i = 0; i < n; ++i) {
        const float* row = x + i * dim;
        double s = 0;
        for (size_t d = 0; d < dim; ++d) s += double(row[d]) * row[d];
        if (!(s > 0))
            throw std::invalid_argument(std::string(what) + " row " + std::to_string(i) +
                                        " has zero norm; cosine is undefined for it");
        const float inv = float(1.0 / std::sqrt(s));
        for (size_t d = 0; d < dim; ++d) buf[i * dim + d] = row[d] * inv;
    }
    return buf.data();
}

struct NativeIndex {
    std::unique_ptr<HnswIndex> ix;
    // compact() swaps `ix` for a rebuilt index: every call reads under this
    // lock. Nothing holds it while waiting for the GIL, so it cannot deadlock.
    std::unique_ptr<std::shared_mutex> swap_mu = std::make_unique<std::shared_mutex>();
    std::shared_lock<std::shared_mutex> reading() const { return std::shared_lock<std::shared_mutex>(*swap_mu); }

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
        auto g = reading();
        check_dim("vectors", x.shape(1), ix->dim());
        if (ids.shape(0) != x.shape(0)) throw std::invalid_argument("ids and vectors differ in length");
        std::vector<const int32_t*> values;
        for (const auto& v : attr_values) {
            if (v.shape(0) != x.shape(0)) throw std::invalid_argument("an attribute array and vectors differ in length");
            values.push_back(v.data());
        }
        auto cancel = python_cancel();
        std::vector<float> buf;
        run_released([&] {
            const float* rows = maybe_normalize(x.data(), x.shape(0), ix->dim(), ix->params().metric, "vectors", buf);
            ix->add(rows, ids.data(), x.shape(0), num_threads, cancel, attr_names, values);
        });
    }

    nb::tuple search_filtered(FloatMatrix q, size_t k, size_t ef, bool rescore, size_t num_threads,
                              std::optional<IdVector> allowed,
                              const std::vector<std::pair<std::string, std::vector<int32_t>>>& conditions,
                              double brute_fraction, double walk_cost) {
        return run_search(q, k, [&](const float* rows, size_t n, uint64_t* ids, float* scores, const CancelCheck& cancel) {
            ix->search_filtered(rows, n, k, ef, rescore, num_threads, allowed ? allowed->data() : nullptr,
                                allowed ? allowed->shape(0) : 0, allowed.has_value(), conditions, brute_fraction,
                                walk_cost, ids, scores, cancel);
        });
    }

    void compact(size_t num_threads) {
        nb::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> w(*swap_mu);
        ix = ix->compacted(num_threads);
    }

    nb::tuple search(FloatMatrix q, size_t k, size_t ef, bool rescore, size_t num_threads, bool exact) {
        return run_search(q, k, [&](const float* rows, size_t n, uint64_t* ids, float* scores, const CancelCheck& cancel) {
            if (exact) ix->search_exact(rows, n, k, rescore, num_threads, ids, scores, cancel);
            else ix->search(rows, n, k, ef, rescore, num_threads, ids, scores, cancel);
        });
    }

    // The part every search shares: checks, output arrays, cosine
    // normalization and the search itself with the GIL released.
    template <class Fn>
    nb::tuple run_search(FloatMatrix q, size_t k, const Fn& fn) {
        auto g = reading();
        check_dim("queries", q.shape(1), ix->dim());
        if (k == 0) throw std::invalid_argument("k must be positive");
        const size_t n = q.shape(0);
        std::unique_ptr<uint64_t[]> ids(new uint64_t[n * k]);
        std::unique_ptr<float[]> scores(new float[n * k]);
        auto cancel = python_cancel();
        std::vector<float> buf;
        run_released([&] {
            const float* rows = maybe_normalize(q.data(), n, ix->dim(), ix->params().metric, "queries", buf);
            fn(rows, n, ids.get(), scores.get(), cancel);
        });
        return nb::make_tuple(to_numpy(std::move(ids), {n, k}), to_numpy(std::move(scores), {n, k}));
    }

    void remove(IdVector ids) {
        auto g = reading();
        nb::gil_scoped_release release;
        ix->remove(ids.data(), ids.shape(0));
    }

    nb::ndarray<nb::numpy, bool> contains(IdVector ids) {
        auto g = reading();
        const size_t n = ids.shape(0);
        std::unique_ptr<bool[]> out(new bool[n]);
        for (size_t i = 0; i < n; ++i) out[i] = ix->contains(ids.data()[i]);
        return to_numpy(std::move(out), {n});
    }

    nb::ndarray<nb::numpy, float> get_vectors(IdVector ids) {
        auto g = reading();
        const size_t n = ids.shape(0);
        std::unique_ptr<float[]> out(new float[n * ix->dim()]);
        ix->get_vectors(ids.data(), n, out.get());
        return to_numpy(std::move(out), {n, ix->dim()});
    }

    nb::ndarray<nb::numpy, uint64_t> ids() {
        auto g = reading();
        std::vector<uint64_t> v = ix->ids();
        std::unique_ptr<uint64_t[]> out(new uint64_t[v.size()]);
        std::copy(v.begin(), v.end(), out.get());
        return to_numpy(std::move(out), {v.size()});
    }

    nb::ndarray<nb::numpy, float> quantizer_param(bool step) {
        auto g = reading();
        const auto& v = step ? ix->quantizer().step() : ix->quantizer().lo();
        std::unique_ptr<float[]> out(new float[v.size()]);
        std::copy(v.begin(), v.end(), out.get());
        return to_numpy(std::move(out), {v.size()});
    }

    void save(const std::string& path) {
        auto g = reading();
        nb::gil_scoped_release release;
        ix->save(path);
    }

    static NativeIndex load(const std::string& path, bool mmap, bool verify, const std::string& isa) {
        std::unique_ptr<HnswIndex> p;
        {
            nb::gil_scoped_release release;
            p = HnswIndex::load(path, mmap, verify, isa);
        }
        return NativeIndex(std::move(p));
    }
};

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

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "simsearch native core: int8 HNSW index and SIMD kernels (private; use simsearch.Index)";
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const simsearch::IOError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const std::out_of_range& e) {
            PyErr_SetString(PyExc_KeyError, e.what());
        }
    });

    m.def("available_isas", &available_isas, "ISAs this CPU runs, best first.");
    m.def("known_isas", &known_isas, "ISAs compiled into this build.");
    m.def("kernel_dot_u8s8", &kernel_dot_u8s8);
    m.def("kernel_f32", &kernel_f32);
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
        .def("save", &NativeIndex::save)
        .def_static("load", &NativeIndex::load)
        .def("set_isa", [](NativeIndex& s, const std::string& isa) { auto g = s.reading(); s.ix->set_isa(isa); })
        .def("search_filtered", &NativeIndex::search_filtered)
        .def("compact", &NativeIndex::compact)
        .def_prop_ro("attribute_names", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->attribute_names(); })
        .def_prop_ro("dim", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->dim(); })
        .def_prop_ro("size", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->size(); })
        .def_prop_ro("n_slots", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->n_slots(); })
        .def_prop_ro("n_deleted", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->n_deleted(); })
        .def_prop_ro("isa", [](const NativeIndex& s) { auto g = s.reading(); return std::string(s.ix->isa()); })
        .def_prop_ro("metric", [](const NativeIndex& s) { auto g = s.reading(); return uint32_t(s.ix->params().metric); })
        .def_prop_ro("M", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->params().M; })
        .def_prop_ro("ef_construction", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->params().ef_construction; })
        .def_prop_ro("keep_floats", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->params().keep_floats; })
        .def_prop_ro("has_floats", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->has_floats(); })
        .def_prop_ro("quantizer_final", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->quantizer_final(); })
        .def_prop_ro("next_auto_id", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->next_auto_id(); })
        .def_prop_ro("memory_bytes", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->memory_bytes(); })
        .def_prop_ro("max_level", [](const NativeIndex& s) { auto g = s.reading(); return s.ix->max_level(); });
}
