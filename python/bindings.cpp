// pybind11 glue only: checks numpy buffers, releases the GIL, calls csrc/. No logic here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "dense.h"
#include "sample.h"
#include "ternary.h"

namespace py = pybind11;
using namespace ternary;

namespace {

template <typename T>
const char* dtype_name() {
    if (std::is_same_v<T, float>) return "float32";
    if (std::is_same_v<T, int8_t>) return "int8";
    if (std::is_same_v<T, uint8_t>) return "uint8";
    if (std::is_same_v<T, int32_t>) return "int32";
    if (std::is_same_v<T, int16_t>) return "int16";
    if (std::is_same_v<T, int64_t>) return "int64";
    if (std::is_same_v<T, double>) return "float64";
    return "float16";  // uint16_t carries IEEE half
}

std::string shape_str(const py::array& a) {
    std::ostringstream s;
    s << "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
    s << (a.ndim() == 1 ? ",)" : ")");
    return s.str();
}

// Checks dtype (TypeError), rank, C-contiguity and the dims given as >= 0 (ValueError).
// T = uint16_t means float16.
// Dtype tests against dtypes made once (never freed: they live as long as the module), not
// parsed from or printed to a string per call: on the decode path that round trip through
// numpy's Python code cost microseconds per kernel call.
bool is_f16(const py::dtype& d) {
    static const py::dtype* f16 = new py::dtype("float16");
    return d.is(*f16);
}
bool is_i8(const py::dtype& d) { return d.is(py::dtype::of<int8_t>()); }

template <typename T>
void check(const py::array& a, const char* name, std::vector<int64_t> dims, bool writable = false) {
    const bool dtype_ok = std::is_same_v<T, uint16_t> ? is_f16(a.dtype()) : a.dtype().is(py::dtype::of<T>());
    if (!dtype_ok)
        throw py::type_error(std::string(name) + ": expected dtype " + dtype_name<T>() + ", got " +
                             std::string(py::str(a.dtype())));
    if (a.ndim() != py::ssize_t(dims.size()))
        throw py::value_error(std::string(name) + ": expected " + std::to_string(dims.size()) +
                              "-d array, got shape " + shape_str(a));
    for (size_t i = 0; i < dims.size(); ++i) {
        if (dims[i] >= 0 && a.shape(py::ssize_t(i)) != dims[i]) {
            std::ostringstream s;
            s << name << ": expected dim " << i << " = " << dims[i] << ", got shape " << shape_str(a);
            throw py::value_error(s.str());
        }
    }
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + ": expected a C-contiguous array");
    // The kernels read and write through typed pointers: a view at an odd byte offset (e.g.
    // np.frombuffer(..., offset=1)) would be a misaligned access, undefined behaviour.
    if (reinterpret_cast<uintptr_t>(a.data()) % sizeof(T))
        throw py::value_error(std::string(name) + ": expected an aligned array (data address not a multiple of " +
                              std::to_string(sizeof(T)) + " bytes); pass a copy");
    if (writable && !a.writeable())
        throw py::value_error(std::string(name) + ": expected a writable array");
}

Format parse_format(const std::string& fmt) {
    if (fmt == "t2") return Format::T2;
    if (fmt == "t1") return Format::T1;
    if (fmt == "tl1") return Format::TL1;
    if (fmt == "tl2") return Format::TL2;
    throw py::value_error("unknown ternary format '" + fmt + "' (expected 't2', 't1', 'tl1' or 'tl2')");
}

template <typename T>
T* mut(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <typename T>
const T* cst(const py::array& a) { return static_cast<const T*>(a.data()); }

// Returns `out` checked (a writable C-contiguous T array of the given shape), or a fresh one.
template <typename T = float>
py::array out_array(py::object out, std::vector<int64_t> dims, const char* name = "out") {
    if (out.is_none()) return py::array_t<T>(std::vector<py::ssize_t>(dims.begin(), dims.end()));
    if (!py::isinstance<py::array>(out))
        throw py::type_error(std::string(name) + ": expected a numpy array, got " +
                             std::string(py::str(py::type::of(out).attr("__name__"))));
    py::array a = py::reinterpret_borrow<py::array>(out);
    check<T>(a, name, dims, true);
    return a;
}

// `outs` of a fused call: empty for None, else a list of one entry per matrix.
std::vector<py::object> list_of(py::object outs, size_t n) {
    if (outs.is_none()) return {};
    const auto given = outs.cast<std::vector<py::object>>();
    if (given.size() != n)
        throw py::value_error("outs: expected " + std::to_string(n) + " arrays (one per matrix), got " +
                              std::to_string(given.size()));
    return given;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "ternary-engine C++ kernels (see docs/CONTRACTS.md for the API)";

    m.def("available_isas", [] {
        int n;
        const char* const* names = available_isas(&n);
        return std::vector<std::string>(names, names + n);
    });
    m.def("active_isa", [] { return std::string(active_kernels().name); });
    m.def("set_isa", [](const std::string& name) {
        if (!set_active_isa(name.c_str())) throw py::value_error("ISA '" + name + "' is not available on this CPU");
    });
    m.def("threads", [] { return num_threads(); });
    m.def("set_threads", [](int n) {
        if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
        py::gil_scoped_release nogil;
        set_num_threads(n);
    });
    m.def("physical_cores", [] { return physical_cores(); });
    m.def(
        "stream_read_gbps",
        [](size_t nbytes, int threads, int reps) {
            py::gil_scoped_release nogil;
            return stream_read_gbps(nbytes, threads, reps);
        },
        py::arg("nbytes"), py::arg("threads"), py::arg("reps") = 5,
        "Median GB/s of `reps` sequential reads of an nbytes buffer by `threads` threads.");

    m.def("row_bytes", [](const std::string& fmt, int64_t k) {
        if (k < 1) throw py::value_error("k must be >= 1");
        return int64_t(row_bytes(parse_format(fmt), k));
    });
    m.def("pack", [](const std::string& fmt, py::array w) {
        const Format f = parse_format(fmt);
        check<int8_t>(w, "w", {-1, -1});
        const int64_t n = w.shape(0), k = w.shape(1);
        if (k < 1) throw py::value_error("w: K must be >= 1");
        py::array_t<uint8_t> out({py::ssize_t(n), py::ssize_t(row_bytes(f, k))});
        bool ok;
        {
            py::gil_scoped_release nogil;
            ok = pack_rows(f, cst<int8_t>(w), n, k, out.mutable_data());
        }
        if (!ok) throw py::value_error("w: ternary weights must be in {-1, 0, 1}");
        return out;
    });
    m.def("unpack", [](const std::string& fmt, py::array packed, int64_t k) {
        const Format f = parse_format(fmt);
        if (k < 1) throw py::value_error("k must be >= 1");
        check<uint8_t>(packed, "packed", {-1, int64_t(row_bytes(f, k))});
        const int64_t n = packed.shape(0);
        py::array_t<int8_t> out({py::ssize_t(n), py::ssize_t(k)});
        py::gil_scoped_release nogil;
        unpack_rows(f, cst<uint8_t>(packed), n, k, out.mutable_data());
        return out;
    });

    m.def(
        "quantize_rows",
        [](py::array x, py::object q_out, py::object s_out) {
            check<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            py::array q = out_array<int8_t>(q_out, {M, K}, "q");
            py::array s = out_array(s_out, {M}, "act_scale");
            {
                py::gil_scoped_release nogil;
                quantize_rows(cst<float>(x), M, K, mut<int8_t>(q), mut<float>(s));
            }
            return py::make_tuple(q, s);
        },
        py::arg("x"), py::arg("q") = py::none(), py::arg("act_scale") = py::none());
    m.def(
        "rmsnorm_quantize_rows",
        [](py::array x, py::array weight, float eps, py::object q_out, py::object s_out) {
            check<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            check<float>(weight, "weight", {K});
            py::array q = out_array<int8_t>(q_out, {M, K}, "q");
            py::array s = out_array(s_out, {M}, "act_scale");
            {
                py::gil_scoped_release nogil;
                rmsnorm_quantize_rows(cst<float>(x), cst<float>(weight), M, K, eps, mut<int8_t>(q),
                                      mut<float>(s));
            }
            return py::make_tuple(q, s);
        },
        py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("q") = py::none(),
        py::arg("act_scale") = py::none());

    m.def("ternary_matmul_i32", [](const std::string& fmt, py::array packed, int64_t k, py::array q) {
        const Format f = parse_format(fmt);
        if (k < 1) throw py::value_error("k must be >= 1");
        check<uint8_t>(packed, "packed", {-1, int64_t(row_bytes(f, k))});
        check<int8_t>(q, "q", {-1, k});
        const int64_t N = packed.shape(0), M = q.shape(0);
        py::array_t<int32_t> acc({M, N});
        py::gil_scoped_release nogil;
        ternary_matmul_i32(f, cst<uint8_t>(packed), N, k, cst<int8_t>(q), M, acc.mutable_data());
        return acc;
    });
    m.def(
        "ternary_linear",
        [](const std::string& fmt, py::array packed, int64_t k, py::array q, py::array act_scale,
           float weight_scale, bool divide, py::object out) {
            const Format f = parse_format(fmt);
            if (k < 1) throw py::value_error("k must be >= 1");
            check<uint8_t>(packed, "packed", {-1, int64_t(row_bytes(f, k))});
            check<int8_t>(q, "q", {-1, k});
            const int64_t N = packed.shape(0), M = q.shape(0);
            check<float>(act_scale, "act_scale", {M});
            py::array o = out_array(out, {M, N});
            {
                py::gil_scoped_release nogil;
                ternary_linear(f, cst<uint8_t>(packed), N, k, cst<int8_t>(q), cst<float>(act_scale),
                               M, weight_scale, divide, mut<float>(o));
            }
            return o;
        },
        py::arg("fmt"), py::arg("packed"), py::arg("k"), py::arg("q"), py::arg("act_scale"),
        py::arg("weight_scale"), py::arg("divide") = false, py::arg("out") = py::none());

    m.def(
        "ternary_linear_fused",
        [](const std::string& fmt, std::vector<py::array> packed, int64_t k, py::array q,
           py::array act_scale, std::vector<float> weight_scales, bool divide, py::object outs) {
            const Format f = parse_format(fmt);
            if (k < 1) throw py::value_error("k must be >= 1");
            if (packed.empty()) throw py::value_error("packed: expected at least one projection");
            if (weight_scales.size() != packed.size())
                throw py::value_error("weight_scales: expected " + std::to_string(packed.size()) +
                                      " scales (one per packed matrix), got " +
                                      std::to_string(weight_scales.size()));
            check<int8_t>(q, "q", {-1, k});
            const int64_t M = q.shape(0);
            check<float>(act_scale, "act_scale", {M});
            const std::vector<py::object> given = list_of(outs, packed.size());
            std::vector<py::array> o;
            std::vector<TernaryProjection> proj;
            for (size_t i = 0; i < packed.size(); ++i) {
                const std::string pi = "packed[" + std::to_string(i) + "]";
                check<uint8_t>(packed[i], pi.c_str(), {-1, int64_t(row_bytes(f, k))});
                const int64_t N = packed[i].shape(0);
                const std::string oi = "outs[" + std::to_string(i) + "]";
                o.push_back(out_array(given.empty() ? py::none() : given[i], {M, N}, oi.c_str()));
                proj.push_back({cst<uint8_t>(packed[i]), N, weight_scales[i], mut<float>(o.back())});
            }
            {
                py::gil_scoped_release nogil;
                ternary_linear_fused(f, proj.data(), int(proj.size()), k, cst<int8_t>(q),
                                     cst<float>(act_scale), M, divide);
            }
            return o;
        },
        py::arg("fmt"), py::arg("packed"), py::arg("k"), py::arg("q"), py::arg("act_scale"),
        py::arg("weight_scales"), py::arg("divide") = false, py::arg("outs") = py::none());

    m.def(
        "f16_linear",
        [](py::array w, py::array x, py::object out) {
            check<uint16_t>(w, "w", {-1, -1});
            const int64_t N = w.shape(0), K = w.shape(1);
            check<float>(x, "x", {-1, K});
            const int64_t M = x.shape(0);
            py::array o = out_array(out, {M, N});
            {
                py::gil_scoped_release nogil;
                f16_linear(cst<uint16_t>(w), N, K, cst<float>(x), M, mut<float>(o));
            }
            return o;
        },
        py::arg("w"), py::arg("x"), py::arg("out") = py::none());
    m.def(
        "f16_linear_fused",
        [](std::vector<py::array> w, py::array x, py::object outs) {
            if (w.empty()) throw py::value_error("w: expected at least one matrix");
            check<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            const std::vector<py::object> given = list_of(outs, w.size());
            std::vector<py::array> o;
            std::vector<const uint16_t*> wp;
            std::vector<int64_t> N;
            std::vector<float*> op;
            for (size_t i = 0; i < w.size(); ++i) {
                const std::string wi = "w[" + std::to_string(i) + "]", oi = "outs[" + std::to_string(i) + "]";
                check<uint16_t>(w[i], wi.c_str(), {-1, K});
                N.push_back(w[i].shape(0));
                o.push_back(out_array(given.empty() ? py::none() : given[i], {M, N.back()}, oi.c_str()));
                wp.push_back(cst<uint16_t>(w[i]));
                op.push_back(mut<float>(o.back()));
            }
            {
                py::gil_scoped_release nogil;
                f16_linear_fused(wp.data(), N.data(), int(w.size()), K, cst<float>(x), M, op.data());
            }
            return o;
        },
        py::arg("w"), py::arg("x"), py::arg("outs") = py::none());
    m.def(
        "int8_linear",
        [](py::array w, py::array row_scale, py::array x, py::object out) {
            check<int8_t>(w, "w", {-1, -1});
            const int64_t N = w.shape(0), K = w.shape(1);
            check<float>(row_scale, "row_scale", {N});
            check<float>(x, "x", {-1, K});
            const int64_t M = x.shape(0);
            py::array o = out_array(out, {M, N});
            {
                py::gil_scoped_release nogil;
                int8_linear(cst<int8_t>(w), cst<float>(row_scale), N, K, cst<float>(x), M, mut<float>(o));
            }
            return o;
        },
        py::arg("w"), py::arg("row_scale"), py::arg("x"), py::arg("out") = py::none());
    m.def(
        "q4_linear",
        [](py::array packed, py::array sub, py::array row_scale, py::array x, py::object out) {
            check<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            if (K < 1 || K > kQ4MaxK)
                throw py::value_error("x: q4 rows need 1 <= K <= " + std::to_string(kQ4MaxK) +
                                      ", got K = " + std::to_string(K));
            const int64_t G = (K + kQ4Group - 1) / kQ4Group;
            check<uint8_t>(packed, "packed", {-1, G * kQ4GroupBytes});
            const int64_t N = packed.shape(0);
            check<int16_t>(sub, "sub", {N, G});
            check<float>(row_scale, "row_scale", {N});
            py::array o = out_array(out, {M, N});
            {
                py::gil_scoped_release nogil;
                q4_linear(cst<uint8_t>(packed), cst<int16_t>(sub), cst<float>(row_scale), N, K,
                          cst<float>(x), M, mut<float>(o));
            }
            return o;
        },
        py::arg("packed"), py::arg("sub"), py::arg("row_scale"), py::arg("x"),
        py::arg("out") = py::none());

    m.def(
        "rmsnorm",
        [](py::array x, py::array weight, float eps, py::object out) {
            check<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            check<float>(weight, "weight", {K});
            py::array o = out_array(out, {M, K});
            {
                py::gil_scoped_release nogil;
                rmsnorm(cst<float>(x), cst<float>(weight), M, K, eps, mut<float>(o));
            }
            return o;
        },
        py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("out") = py::none());
    m.def("rope_neox", [](py::array x, py::array cos, py::array sin) {
        check<float>(x, "x", {-1, -1, -1}, true);
        const int64_t T = x.shape(0), H = x.shape(1), D = x.shape(2);
        if (D % 2) throw py::value_error("x: head_dim must be even for NeoX rope");
        check<float>(cos, "cos", {T, D / 2});
        check<float>(sin, "sin", {T, D / 2});
        py::gil_scoped_release nogil;
        rope_neox(mut<float>(x), T, H, D, cst<float>(cos), cst<float>(sin));
    });
    m.def(
        "attention",
        [](py::array q, py::array k_cache, py::array v_cache, int64_t pos0, py::object out,
           py::object k_scale, py::object v_scale) {
            check<float>(q, "q", {-1, -1, -1});
            const int64_t T = q.shape(0), Hq = q.shape(1), D = q.shape(2);
            if (k_cache.ndim() != 3)
                throw py::value_error("k_cache: expected 3-d array, got shape " + shape_str(k_cache));
            const int64_t Hkv = k_cache.shape(0), C = k_cache.shape(1);
            KvCacheView kv{KvType::F32, k_cache.data(), v_cache.data()};
            const py::dtype dt = k_cache.dtype();
            if (is_f16(dt)) {
                check<uint16_t>(k_cache, "k_cache", {-1, -1, D});
                check<uint16_t>(v_cache, "v_cache", {Hkv, C, D});
                kv.type = KvType::F16;
            } else if (is_i8(dt)) {
                check<int8_t>(k_cache, "k_cache", {-1, -1, D});
                check<int8_t>(v_cache, "v_cache", {Hkv, C, D});
                if (k_scale.is_none() || v_scale.is_none())
                    throw py::value_error("attention: an int8 cache needs k_scale and v_scale [Hkv, C]");
                py::array ks = k_scale.cast<py::array>(), vs = v_scale.cast<py::array>();
                check<float>(ks, "k_scale", {Hkv, C});
                check<float>(vs, "v_scale", {Hkv, C});
                kv = KvCacheView{KvType::I8, k_cache.data(), v_cache.data(), cst<float>(ks), cst<float>(vs)};
            } else {
                check<float>(k_cache, "k_cache", {-1, -1, D});  // float32, or the dtype error
                check<float>(v_cache, "v_cache", {Hkv, C, D});
            }
            if (kv.type != KvType::I8 && !(k_scale.is_none() && v_scale.is_none()))
                throw py::value_error("attention: k_scale / v_scale belong to an int8 cache only");
            if (Hkv < 1 || Hq % Hkv) throw py::value_error("q heads must be a multiple of kv heads");
            if (pos0 < 0 || pos0 + T > C)
                throw py::value_error("attention: positions " + std::to_string(pos0) + ".." +
                                      std::to_string(pos0 + T) + " exceed the cache (" +
                                      std::to_string(C) + ")");
            py::array o = out_array(out, {T, Hq, D});
            {
                py::gil_scoped_release nogil;
                attention_kv(cst<float>(q), T, Hq, D, kv, Hkv, C, pos0, mut<float>(o));
            }
            return o;
        },
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"), py::arg("out") = py::none(),
        py::arg("k_scale") = py::none(), py::arg("v_scale") = py::none());
    m.def(
        "kv_store_int8",
        [](py::array x, py::array q_cache, py::array s_cache, int64_t pos0) {
            check<float>(x, "x", {-1, -1, -1});
            const int64_t T = x.shape(0), Hkv = x.shape(1), D = x.shape(2);
            check<int8_t>(q_cache, "q_cache", {Hkv, -1, D}, true);
            const int64_t C = q_cache.shape(1);
            check<float>(s_cache, "s_cache", {Hkv, C}, true);
            if (pos0 < 0 || pos0 + T > C)
                throw py::value_error("kv_store_int8: positions " + std::to_string(pos0) + ".." +
                                      std::to_string(pos0 + T) + " exceed the cache (" +
                                      std::to_string(C) + ")");
            py::gil_scoped_release nogil;
            kv_store_int8(cst<float>(x), T, Hkv, D, mut<int8_t>(q_cache), mut<float>(s_cache), C, pos0);
        },
        py::arg("x"), py::arg("q_cache"), py::arg("s_cache"), py::arg("pos0"));

    m.def(
        "sample_top_k",
        [](py::array logits, py::array window, py::array counts, double repetition, double frequency,
           double presence, int64_t k, float inv_t, py::array work, py::array ids, py::array scaled) {
            check<float>(logits, "logits", {-1});
            const int64_t V = logits.shape(0);
            check<int64_t>(window, "window", {-1});
            const int64_t m = window.shape(0);
            check<int32_t>(counts, "counts", {m});
            check<float>(work, "work", {V}, true);
            check<int64_t>(ids, "ids", {V}, true);
            check<float>(scaled, "scaled", {V}, true);
            if (k < 1 || k >= V) throw py::value_error("sample_top_k: need 0 < k < vocab");
            const int64_t* w = cst<int64_t>(window);
            for (int64_t j = 0; j < m; ++j)
                if (w[j] < 0 || w[j] >= V) throw py::value_error("window: ids must be in [0, vocab)");
            py::gil_scoped_release nogil;
            return sample_top_k(cst<float>(logits), V, w, cst<int32_t>(counts), m, repetition, frequency,
                                presence, k, inv_t, mut<float>(work), mut<int64_t>(ids), mut<float>(scaled));
        },
        py::arg("logits"), py::arg("window"), py::arg("counts"), py::arg("repetition"),
        py::arg("frequency"), py::arg("presence"), py::arg("k"), py::arg("inv_t"), py::arg("work"),
        py::arg("ids"), py::arg("scaled"));
    m.def(
        "sample_cut_draw",
        [](py::array probs, double top_p, double min_p, double u01, int64_t block_draw, py::array csum) {
            check<float>(probs, "probs", {-1});
            const int64_t n = probs.shape(0);
            if (n < 1) throw py::value_error("probs: expected at least one probability");
            check<double>(csum, "csum", {-1}, true);
            if (csum.shape(0) < n) throw py::value_error("csum: expected at least len(probs) entries");
            py::gil_scoped_release nogil;
            return sample_cut_draw(cst<float>(probs), n, top_p, min_p, u01, block_draw, mut<double>(csum));
        },
        py::arg("probs"), py::arg("top_p"), py::arg("min_p"), py::arg("u01"), py::arg("block_draw"),
        py::arg("csum"));
}
