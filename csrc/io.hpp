// The index file: a fixed 512-byte header, then sections at 64-byte aligned
// offsets, each with its length and a 64-bit checksum in the header, and the
// header's own checksum last. Sections are the in-memory arrays byte for
// byte, so load(mmap=true) points the level-0 records, labels and float
// originals straight into the mapped file.
//
// Saving writes a temporary file of its own ("<path>.tmp-<pid>-<n>-<random>",
// created with O_EXCL, so two saves to one path never share one), fsyncs it,
// renames it over <path> and fsyncs the directory: a reader sees the old file
// or a whole new one, never a mix, and of two concurrent saves the last
// rename wins with a whole file.
//
// Loading trusts nothing in the file: the checksums carry no key, so anyone
// can recompute them after editing a file. Every size is checked against the
// file length before anything is allocated, and the structural checks
// (checks.hpp) run whether or not the checksums are verified.
//
// mmap: the mapping holds the file it was opened from (its inode and an open
// descriptor), so replacing the file by rename (what save does) is safe for
// an index already loaded: it keeps reading the old file. Rewriting a mapped
// file in place (cp over it, truncating it, writing into it) is not safe:
// the checks ran once at load, and the private mapping still shows later
// in-place writes to pages it has not copied (a truncation is a SIGBUS).
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <random>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include "graph.hpp"

namespace simsearch {

// A file that cannot be read or written: becomes OSError in Python.
struct IOError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A file that is not a valid index: becomes simsearch.CorruptFileError (a
// ValueError) in Python.
struct FormatError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
// A file of a newer format version: becomes simsearch.FormatVersionError.
struct VersionError : FormatError {
    using FormatError::FormatError;
};

constexpr char kMagic[8] = {'S', 'I', 'M', 'S', 'I', 'D', 'X', '1'};
constexpr uint32_t kFormatVersion = 1;

enum Section : uint32_t {
    kData0 = 0, kLabels, kLevels, kFlags, kUpperOff, kUpperPool, kQuantLo, kQuantStep, kFree, kFloats,
    kAttrNames, kAttrValues, kNumSections
};
constexpr const char* kSectionNames[kNumSections] = {
    "level-0 records", "labels", "levels", "flags", "upper offsets", "upper links",
    "quantizer lo", "quantizer step", "free list", "float originals",
    "attribute names", "attribute values"};

struct SectionEntry {
    uint64_t offset;
    uint64_t length;
    uint64_t checksum;
};

struct FileHeader {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t metric;
    uint32_t dtype;  // 0 = int8 codes
    uint64_t dim;
    uint64_t dim_padded;
    uint64_t M;
    uint64_t ef_construction;
    uint64_t rec_size;
    uint64_t n_slots;
    uint64_t n_live;
    uint64_t seed;
    uint64_t train_limit;
    uint64_t next_retrain;
    uint64_t next_auto_id;
    uint32_t entry;
    int32_t max_level;
    uint32_t flags;  // bit 0: keep_floats, bit 1: quantizer final, bit 2: floats section present
    uint32_t n_sections;
    SectionEntry sections[kNumSections];
    uint64_t ef;  // default search effort; 0 in files written before it was stored (read as 64)
    uint8_t reserved[80];
    uint64_t header_checksum;  // over every byte before it
};
static_assert(sizeof(SectionEntry) == 24, "section entry layout");
static_assert(sizeof(FileHeader) == 512, "the index file header is 512 bytes");
static_assert(offsetof(FileHeader, sections) == 128, "header layout is pinned");
static_assert(offsetof(FileHeader, ef) == 416, "header layout is pinned");
constexpr size_t kDefaultEf = 64;

// 64-bit checksum, four independent lanes of multiply-rotate over 8-byte
// words for speed (several GB/s), folded at the end; not cryptographic.
inline uint64_t checksum64(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    constexpr uint64_t k1 = 0x9E3779B185EBCA87ULL, k2 = 0xC2B2AE3D27D4EB4FULL;
    uint64_t h[4] = {k1, k2, k1 ^ 0x1234567ULL, k2 ^ 0x89ABCDEFULL};
    auto mix = [&](uint64_t acc, uint64_t w) {
        acc ^= w * k2;
        acc = (acc << 31) | (acc >> 33);
        return acc * k1;
    };
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        std::memcpy(w, p + i, 32);
        for (int j = 0; j < 4; ++j) h[j] = mix(h[j], w[j]);
    }
    uint64_t out = uint64_t(n) * k1;
    for (int j = 0; j < 4; ++j) out = mix(out, h[j]);
    for (; i < n; ++i) out = mix(out, p[i]);
    out ^= out >> 29;
    out *= k2;
    out ^= out >> 32;
    return out;
}

// Writes a new file next to `target` under a name no other writer uses,
// created with O_EXCL (never an existing file, never a shared one).
class FileWriter {
public:
    explicit FileWriter(const std::string& target) {
        static std::atomic<uint64_t> counter{0};
        std::random_device rd;
        for (int attempt = 0;; ++attempt) {
            path_ = target + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) + "-" +
                    std::to_string(rd());
            fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd_ >= 0) return;
            if (errno != EEXIST || attempt >= 100) {
                path_ = target;
                fail("cannot create");
            }
        }
    }
    const std::string& path() const { return path_; }
    ~FileWriter() {
        if (fd_ >= 0) ::close(fd_);
    }
    void pwrite_all(const void* data, size_t n, uint64_t offset) {
        const char* p = static_cast<const char*>(data);
        while (n > 0) {
            const ssize_t w = ::pwrite(fd_, p, std::min<size_t>(n, size_t(1) << 30), off_t(offset));
            if (w < 0) {
                if (errno == EINTR) continue;
                fail("cannot write");
            }
            p += w;
            n -= size_t(w);
            offset += uint64_t(w);
        }
    }
    void sync_and_close() {
        if (::fsync(fd_) != 0) fail("cannot fsync");
        if (::close(fd_) != 0) {
            fd_ = -1;
            fail("cannot close");
        }
        fd_ = -1;
    }

private:
    [[noreturn]] void fail(const char* what) {
        throw IOError(std::string(what) + " '" + path_ + "': " + std::strerror(errno));
    }
    std::string path_;
    int fd_ = -1;
};

inline void fsync_parent_dir(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

struct IndexFile {
    static void save(const HnswIndex& ix, const std::string& path);
    static std::unique_ptr<HnswIndex> load(const std::string& path, bool use_mmap, bool verify, const std::string& isa);
};

inline void IndexFile::save(const HnswIndex& ix, const std::string& path) {
    std::shared_lock<std::shared_mutex> r(ix.rw_);
    const size_t n = ix.n_slots_;
    // attributes: names joined by NUL; values one int32 column per name
    std::string names;
    for (const std::string& a : ix.attrs_.names) names += a + '\0';
    std::vector<int32_t> attr_values;
    attr_values.reserve(ix.attrs_.cols.size() * n);
    for (const auto& col : ix.attrs_.cols) attr_values.insert(attr_values.end(), col.begin(), col.begin() + n);
    const bool floats = ix.floats_kept();
    struct Src {
        const void* data;
        size_t len;
    };
    const Src src[kNumSections] = {
        {ix.data0_.data(), n * ix.rec_size_},
        {ix.labels_.data(), n * 8},
        {ix.levels_.data(), n},
        {ix.flags_.data(), n},
        {ix.upper_off_.data(), n * 4},
        {ix.upper_pool_.data(), ix.upper_pool_.size() * 4},
        {ix.quant_.lo().data(), ix.p_.dim * 4},
        {ix.quant_.step().data(), ix.p_.dim * 4},
        {ix.free_.data(), ix.free_.size() * 4},
        {floats ? ix.floats_.buf.data() : nullptr, floats ? n * ix.p_.dim * 4 : 0},
        {names.data(), names.size()},
        {attr_values.data(), attr_values.size() * 4},
    };
    FileHeader h;
    std::memset(&h, 0, sizeof h);
    std::memcpy(h.magic, kMagic, 8);
    h.version = kFormatVersion;
    h.header_size = sizeof(FileHeader);
    h.metric = uint32_t(ix.p_.metric);
    h.dtype = 0;
    h.dim = ix.p_.dim;
    h.dim_padded = ix.dim_padded_;
    h.M = ix.p_.M;
    h.ef_construction = ix.p_.ef_construction;
    h.rec_size = ix.rec_size_;
    h.n_slots = n;
    h.n_live = ix.n_live_;
    h.seed = ix.p_.seed;
    h.train_limit = ix.p_.train_limit;
    h.next_retrain = ix.next_retrain_;
    h.next_auto_id = ix.next_auto_id_;
    h.entry = ix.entry_;
    h.max_level = ix.max_level_;
    h.flags = (ix.p_.keep_floats ? 1u : 0u) | (ix.quant_final_ ? 2u : 0u) | (floats ? 4u : 0u);
    h.n_sections = kNumSections;
    h.ef = ix.ef();
    uint64_t off = sizeof(FileHeader);
    for (uint32_t i = 0; i < kNumSections; ++i) {
        if (src[i].len == 0) {  // empty: no bytes in the file, so no offset past its end
            h.sections[i] = {0, 0, checksum64(src[i].data, 0)};
            continue;
        }
        off = (off + 63) & ~uint64_t(63);
        h.sections[i] = {off, src[i].len, checksum64(src[i].data, src[i].len)};
        off += src[i].len;
    }
    h.header_checksum = checksum64(&h, offsetof(FileHeader, header_checksum));

    FileWriter w(path);
    try {
        for (uint32_t i = 0; i < kNumSections; ++i)
            if (src[i].len) w.pwrite_all(src[i].data, src[i].len, h.sections[i].offset);
        w.pwrite_all(&h, sizeof h, 0);
        w.sync_and_close();
        if (::rename(w.path().c_str(), path.c_str()) != 0)
            throw IOError("cannot rename '" + w.path() + "' to '" + path + "': " + std::strerror(errno));
    } catch (...) {
        ::unlink(w.path().c_str());
        throw;
    }
    fsync_parent_dir(path);
}

inline void HnswIndex::save(const std::string& path) const { IndexFile::save(*this, path); }
inline std::unique_ptr<HnswIndex> HnswIndex::load(const std::string& path, bool mmap, bool verify, const std::string& isa) {
    return IndexFile::load(path, mmap, verify, isa);
}

}  // namespace simsearch
