/*
 * test_ids: chunk ids, SHA-256 hashes, text normalization and float.hex()
 * reproduce the original Python worker byte for byte.
 *
 * The tables marked "from python3" were produced by running the original's
 * expressions in CPython 3 (uuid.uuid5, hashlib.sha256, float.hex,
 * '\n'.join(l.rstrip() for l in text.strip().split('\n'))) on the same
 * inputs; the spec's own test vectors are asserted separately.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"

#include "unit/support_lcg.h"

#define DOC1 "00000000-0000-0000-0000-000000000001"

/* ---- chunk ids ----------------------------------------------------------- */

Test(ids, chunk_id_matches_spec_vector_for_ord_0)
{
    char id[DP_UUID_STR_SIZE];
    cr_assert_eq(dp_chunk_id(DOC1, "markdown-simple", "markdown-simple@1", 0, id, NULL, 0), DP_OK);
    cr_assert_str_eq(id, "1153de6e-d6a0-575a-b811-3a0a24059264");
}

Test(ids, chunk_id_matches_spec_vector_for_ord_1)
{
    char id[DP_UUID_STR_SIZE];
    cr_assert_eq(dp_chunk_id(DOC1, "markdown-simple", "markdown-simple@1", 1, id, NULL, 0), DP_OK);
    cr_assert_str_eq(id, "c9cd6a9e-4548-55e2-871f-4de91a2d89d8");
}

Test(ids, chunk_id_is_deterministic_and_differs_by_ord)
{
    char a[DP_UUID_STR_SIZE], b[DP_UUID_STR_SIZE], c[DP_UUID_STR_SIZE];
    dp_chunk_id(DOC1, "markdown-simple", "markdown-simple@1", 7, a, NULL, 0);
    dp_chunk_id(DOC1, "markdown-simple", "markdown-simple@1", 7, b, NULL, 0);
    dp_chunk_id(DOC1, "markdown-simple", "markdown-simple@1", 8, c, NULL, 0);
    cr_assert_str_eq(a, b);
    cr_assert_str_neq(a, c);
}

Test(ids, chunk_id_hashes_document_id_in_lower_case)
{
    char lower[DP_UUID_STR_SIZE], upper[DP_UUID_STR_SIZE];
    dp_chunk_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "markdown-simple", "markdown-simple@1",
                UINT32_MAX, lower, NULL, 0);
    dp_chunk_id("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0", "markdown-simple", "markdown-simple@1",
                UINT32_MAX, upper, NULL, 0);
    cr_assert_str_eq(lower, "b79518d5-0f06-5502-bbac-e747b362e424");   /* from python3 */
    cr_assert_str_eq(upper, lower);
}

Test(ids, chunk_id_does_not_lowercase_the_chunker_version)
{
    char id[DP_UUID_STR_SIZE];
    dp_chunk_id(DOC1, "markdown-simple", "Markdown-Simple@1", 0, id, NULL, 0);
    cr_assert_str_eq(id, "ad749f0c-c6ad-52f4-81ff-701b675346d5");     /* from python3 */
}

Test(ids, chunk_id_rejects_a_document_id_that_is_not_a_uuid)
{
    const char *bad[] = { "", "not-a-uuid", "00000000-0000-0000-0000-00000000000",
                          "00000000-0000-0000-0000-0000000000011", "00000000_0000-0000-0000-000000000001",
                          "0000000g-0000-0000-0000-000000000001", "{00000000-0000-0000-0000-000000000001}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char id[DP_UUID_STR_SIZE], err[128] = "";
        cr_assert_eq(dp_chunk_id(bad[i], "markdown-simple", "markdown-simple@1", 0, id, err, sizeof err),
                     DP_ERR_PERMANENT, "accepted '%s'", bad[i]);
        cr_assert(strstr(err, "not a UUID") != NULL, "message was '%s'", err);
    }
}

Test(ids, uuid5_matches_python_uuid5)
{
    static const uint8_t dns[16] = { 0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1,
                                     0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8 };
    char id[DP_UUID_STR_SIZE];
    dp_uuid5(dns, "python.org", 10, id);
    cr_assert_str_eq(id, "886313e1-3b8a-5372-9b90-0c9aee199e5d");     /* RFC / python docs */
    const char *utf8 = "caf\xc3\xa9 \xe2\x98\x83";
    dp_uuid5(DP_CHUNK_ID_NAMESPACE, utf8, strlen(utf8), id);
    cr_assert_str_eq(id, "191588b6-870e-5a44-a548-f308999160ca");     /* from python3 */
    dp_uuid5(DP_CHUNK_ID_NAMESPACE, "", 0, id);
    cr_assert_str_eq(id, "541f066e-896b-5963-bc5e-55c6c2a79336");     /* from python3 */
}

Test(ids, uuid_parse_and_format_round_trip_in_lower_case)
{
    uint8_t u[16];
    char text[DP_UUID_STR_SIZE];
    cr_assert_eq(dp_uuid_parse("6C8A1E6E-1F0B-4AA8-9F0A-1A7C2E6F2B42", u), 0);
    cr_assert_eq(memcmp(u, DP_CHUNK_ID_NAMESPACE, 16), 0);
    dp_uuid_format(u, text);
    cr_assert_str_eq(text, "6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42");
}

Test(ids, uuid4_is_a_random_version_4_uuid)
{
    char a[DP_UUID_STR_SIZE], b[DP_UUID_STR_SIZE];
    uint8_t u[16];
    dp_uuid4(a);
    dp_uuid4(b);
    cr_assert_eq(dp_uuid_parse(a, u), 0, "%s", a);
    cr_assert_eq(u[6] >> 4, 4, "version 4: %s", a);
    cr_assert_eq(u[8] >> 6, 2, "RFC 4122 variant: %s", a);
    cr_assert_str_neq(a, b);
}

/* ---- sha256 ------------------------------------------------------------- */

Test(ids, sha256_matches_spec_vector)
{
    char hex[DP_SHA256_HEX_SIZE];
    const char *s = "Test content for hashing";
    cr_assert_eq(dp_sha256_hex(s, strlen(s), hex), DP_OK);
    cr_assert_str_eq(hex, "dc0cc3920cd8d2a633fded073be0082554297fde2f0cf15af5e5c2563e49d5de");
    cr_assert_eq(strncmp(hex, "dc0cc392", 8), 0);
    cr_assert_str_eq(hex + 60, "d5de");
}

Test(ids, sha256_of_nothing_is_the_empty_digest)
{
    char hex[DP_SHA256_HEX_SIZE];
    dp_sha256_hex("", 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* ---- normalization and parsed_sha256 ------------------------------------ */

struct norm_case { const char *in, *normalized, *sha; };

/* from python3: (text, normalize(text), sha256(normalize(text))) */
static const struct norm_case NORM_CASES[] = {
    { "hello", "hello", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" },
    { "  hello  ", "hello", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" },
    { "\012\012  a  \012 b \011\012\012 c\015\012\012", "a\012 b\012\012 c", "3a8183343c7a513f3bb8eb81c92d3d28e1a763a062c7d11999de413d23503675" },
    { "a \012b\011\012c", "a\012b\012c", "ea7fb08b7a2dc4619ffb7c7bb38d95a2047935fa165d71b12efd3852a2e6d0cc" },
    { "a\015\012b\015\012", "a\012b", "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78" },
    { "line\302\240\012next\343\200\200", "line\012next", "dc20ec73d7c6c71c3936bd3ff9734b011870b68ef6ca70ac638189d251526eb9" },
    { "\302\240\342\200\250 x \342\200\251\342\200\257", "x", "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881" },
    { "a\013\014\034\035\036\037\012b", "a\012b", "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78" },
    { "\302\205a\302\205", "a", "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb" },
    { "x \012 \012 \012y", "x\012\012\012y", "2f413ecfcf47cfde22878a21e43c6a7fc9d996304ed20edb0948f5ccc614459c" },
    { "caf\303\251 \303\251\012", "caf\303\251 \303\251", "1dcf805899ed48a2d88caab271d7a92852ee28cbeef6728ab2718cc1593ae55a" },
    { "\341\232\200\342\200\200\342\200\201\342\200\212\342\201\237 z", "z", "594e519ae499312b29433b7dd8a97ff068defcba9755b6d5d00e84c524d67b06" },
};

Test(ids, normalize_text_matches_python_strip_and_rstrip_each_line)
{
    for (size_t i = 0; i < sizeof NORM_CASES / sizeof NORM_CASES[0]; i++) {
        const struct norm_case *c = &NORM_CASES[i];
        size_t len = strlen(c->in);
        char *out = malloc(len + 1);
        size_t n = dp_normalize_text(c->in, len, out);
        out[n] = '\0';
        cr_assert_str_eq(out, c->normalized, "case %zu", i);
        free(out);
    }
}

Test(ids, normalize_text_works_in_place)
{
    for (size_t i = 0; i < sizeof NORM_CASES / sizeof NORM_CASES[0]; i++) {
        char *buf = strdup(NORM_CASES[i].in);
        size_t n = dp_normalize_text(buf, strlen(buf), buf);
        cr_assert_eq(n, strlen(NORM_CASES[i].normalized), "case %zu", i);
        cr_assert_eq(memcmp(buf, NORM_CASES[i].normalized, n), 0, "case %zu", i);
        free(buf);
    }
}

Test(ids, parsed_sha256_is_sha256_of_the_normalized_text)
{
    for (size_t i = 0; i < sizeof NORM_CASES / sizeof NORM_CASES[0]; i++) {
        char hex[DP_SHA256_HEX_SIZE];
        cr_assert_eq(dp_parsed_sha256(NORM_CASES[i].in, strlen(NORM_CASES[i].in), hex, NULL, 0), DP_OK);
        cr_assert_str_eq(hex, NORM_CASES[i].sha, "case %zu", i);
    }
}

Test(ids, parsed_sha256_ignores_trailing_spaces_and_outer_blank_lines)
{
    char a[DP_SHA256_HEX_SIZE], b[DP_SHA256_HEX_SIZE];
    const char *clean = "# Title\n\nBody line.";
    const char *messy = "\n\n# Title   \r\n\t\nBody line.\t \n\n";
    dp_parsed_sha256(clean, strlen(clean), a, NULL, 0);
    dp_parsed_sha256(messy, strlen(messy), b, NULL, 0);
    cr_assert_str_eq(a, b);
}

Test(ids, parsed_sha256_of_empty_or_blank_content_is_a_permanent_error)
{
    const char *blank[] = { "", " ", "\n\n\t\r\n", "\xc2\xa0\xe3\x80\x80 \n" };
    for (size_t i = 0; i < sizeof blank / sizeof blank[0]; i++) {
        char hex[DP_SHA256_HEX_SIZE], err[64] = "";
        cr_assert_eq(dp_parsed_sha256(blank[i], strlen(blank[i]), hex, err, sizeof err),
                     DP_ERR_PERMANENT, "case %zu", i);
        cr_assert_str_eq(err, "Parsed content is empty");
    }
}

/* lcg_doc: the generator shared with the python3 tables (support_lcg.c). */

struct lcg_parsed { uint64_t seed; int ntok; const char *sha; };

/* from python3: sha256(normalize(lcg_doc(seed, ntok))) */
static const struct lcg_parsed LCG_PARSED[] = {
    { 1, 47, "bd2463433fbe1d5fd37d98213b8d773a21220af14614386abe1e8ccd1e565792" },
    { 2, 54, "9db6e873902277175384fd06959c6076643438e472ac833c62566e44fdd7e43e" },
    { 3, 61, "b006cd3273de622f95492bac38a325a33a69a6a3ad2d2382386c214ac1e873a7" },
    { 4, 68, "248a247a0d91da9d2913c1ab99a0e433a9cdc2b51b5e243f9c75b1156e8ea330" },
    { 5, 75, "7c9c7a5863c8193d2296e310772b98c073bb0088d10442b4c738f06288e30933" },
    { 6, 82, "0d6ed481eea3c493aea98458d2dbf6d96bb90be5490e5522fbef4475359ed63f" },
    { 7, 89, "413087edef74b1c3283769c6398a7289015a5d09841ab6dde36cff586818953f" },
    { 8, 96, "0bff18e2a9f36d1ac957301eaf010b1070f9c46fc64ca3b623a94c1586cff836" },
    { 9, 103, "025f997feab31c5e3106440d4366fe2db173135390efb6084f50aa9e645839c1" },
    { 10, 110, "c9d26f628dedd19008bae871f92a6b0d49f3b405ca204989fd72b0c8907eab89" },
    { 11, 117, "b15373b81654275251fa8ddba414280c6809a7dd798f3f3930f767edb7e20b04" },
    { 12, 124, "b595b81862808152d5a160e365c15411d708988da5406d5134738b82d4f4c4d0" },
    { 13, 131, "d40d8eac2ca36466aa91894b0e60171aa090b27cfb8c5ff57e394ccef72b6104" },
    { 14, 138, "42577bdb2b20c73cab28c27006725c26367f9713bc9f6e027359f762a5806742" },
    { 15, 145, "3087fd84c11c7e2d65ae35389a03ecc3370dd539035c6a7112a347068eddf94b" },
    { 16, 152, "b309bfc54c57293971f5f8d8dac4423bbee168fbf344b441fa710776a68ec867" },
    { 17, 159, "4b29bcbb37a08b96cca34002d73b995fdbba74e1c35fcec24058c1f17b537402" },
    { 18, 166, "d48b7cc92798d3ff8a67014d754378d6a128455bf95cf2fa36e05a23b8f476a6" },
    { 19, 173, "71208a85dec4528cabf4d076b9925b74d782b9a36e8a61e77fe9be36e6b937aa" },
    { 20, 180, "a78616efb3aef71cc010ee45590a5e1794df2e7bf533347aee662a7cd1ced060" },
    { 21, 187, "5f6823b9c26b7340d7baf4fb338a2c617d262b1f69a735178fc364532ace2741" },
    { 22, 194, "a0f70b47f2248dc30b3639373d53e151e6a17036f752a7e04b66822a97a035f7" },
    { 23, 201, "b1733a006c92bf7c26860c7559ca604057e544c206476eeaa7f484f49f6a0098" },
    { 24, 208, "6731698adf9f9e78916663ef3e23ce80cbcfd214d0b82a74692f92209ada382d" },
    { 25, 215, "4b440cd229252ca36242dfabf2a4893b2a32b85b5a53418b2702b14ace38f72b" },
    { 26, 222, "75dfce0722b391b0c46448aa99fc7db4cd86d64dd2b00e9d02cba9e420e29ec1" },
    { 27, 229, "baa712843cf9298f8fc6fb183686d6a820ca652af2bf6a8c7f0052e91895674d" },
    { 28, 236, "c18cf2c766ff767daa22a9ab0515ff1a96893e68f1cb13b6243b29ae724e24f6" },
    { 29, 243, "9cefd3f54846a3fac0a8d9f0332881fa02657aae3a8f3af9be10366f4fb781c4" },
    { 30, 250, "b6b1e23feed7af4930bea275c702a21f0ed7079a3b41233cec9dfc2b1b0394a3" },
    { 31, 257, "2c010031eaa4a46b46db9ca3e3a9ba0303a2a00a73f3e6b085b07acb3751f79c" },
    { 32, 264, "750166d783c953c6562174468c8f6ecccc21d1edb05ee0656131a439b55bd808" },
    { 33, 271, "3d8d51f59ae8058cb53b2b95ca777b0dcdb49b6b802276db895adc81d7daa19a" },
    { 34, 278, "b4288ec595c92306ff9b3d1cb4300eea6948a5bbfdfd7ea8c9d30bc67d362b67" },
    { 35, 285, "5e05f7ab39aae394dc59a2c5f01de5abeafed1ed3299ce33db2481aee82f1eb9" },
    { 36, 292, "2da14bc9a1d12402ddde4bfdcfacec7aef8327ab197a65d215aedc25f761f8a8" },
    { 37, 299, "9fbcb80dba8c56b81d7d083a614577205c4f6d0436fb56e780f22af0213c5928" },
    { 38, 306, "9c448c53e795d40cda6084913f958aa427bd6565b44aa522cda5c1cb2d00a65c" },
    { 39, 313, "82eb1dca77839913ff4edf276f08f5baaaf1319de1c7a898379720e9bf5fc6b0" },
    { 40, 320, "44fd50711fe72a27a374c1278d4c2835b5e0771ab5e25420e9a225ae4c5cc128" },
};

Test(ids, parsed_sha256_matches_python_on_generated_documents)
{
    for (size_t i = 0; i < sizeof LCG_PARSED / sizeof LCG_PARSED[0]; i++) {
        size_t len;
        char *doc = lcg_doc(LCG_PARSED[i].seed, LCG_PARSED[i].ntok, &len);
        char hex[DP_SHA256_HEX_SIZE];
        cr_assert_eq(dp_parsed_sha256(doc, len, hex, NULL, 0), DP_OK);
        cr_assert_str_eq(hex, LCG_PARSED[i].sha, "seed %d", (int)LCG_PARSED[i].seed);
        free(doc);
    }
}

/* ---- float.hex() and vector_sha ----------------------------------------- */

Test(ids, py_float_hex_matches_spec_examples)
{
    char s[DP_PY_FLOAT_HEX_SIZE];
    dp_py_float_hex(0.1, s);
    cr_assert_str_eq(s, "0x1.999999999999ap-4");
    dp_py_float_hex(1.0, s);
    cr_assert_str_eq(s, "0x1.0000000000000p+0");
    dp_py_float_hex(0.0, s);
    cr_assert_str_eq(s, "0x0.0p+0");
    dp_py_float_hex(-0.0, s);
    cr_assert_str_eq(s, "-0x0.0p+0");
    dp_py_float_hex(INFINITY, s);
    cr_assert_str_eq(s, "inf");
    dp_py_float_hex(-INFINITY, s);
    cr_assert_str_eq(s, "-inf");
    dp_py_float_hex(NAN, s);
    cr_assert_str_eq(s, "nan");
    cr_assert_eq(dp_py_float_hex(-2.2250738585072014e-308, s), 24);
    cr_assert_str_eq(s, "-0x1.0000000000000p-1022");
}

struct float_case { uint64_t bits; const char *hex; };

/* from python3: float.hex() of these bit patterns (specials, random bits of
 * every exponent, random subnormals, values like embedding components) */
static const struct float_case FLOAT_CASES[] = {
    { UINT64_C(0x0000000000000000), "0x0.0p+0" },
    { UINT64_C(0x8000000000000000), "-0x0.0p+0" },
    { UINT64_C(0x3ff0000000000000), "0x1.0000000000000p+0" },
    { UINT64_C(0xbff0000000000000), "-0x1.0000000000000p+0" },
    { UINT64_C(0x3fb999999999999a), "0x1.999999999999ap-4" },
    { UINT64_C(0x3fe0000000000000), "0x1.0000000000000p-1" },
    { UINT64_C(0x4000000000000000), "0x1.0000000000000p+1" },
    { UINT64_C(0x4008000000000000), "0x1.8000000000000p+1" },
    { UINT64_C(0x7e37e43c8800759c), "0x1.7e43c8800759cp+996" },
    { UINT64_C(0x81a56e1fc2f8f359), "-0x1.56e1fc2f8f359p-997" },
    { UINT64_C(0x0000000000000001), "0x0.0000000000001p-1022" },
    { UINT64_C(0x8000000000000001), "-0x0.0000000000001p-1022" },
    { UINT64_C(0x0010000000000000), "0x1.0000000000000p-1022" },
    { UINT64_C(0x000fffffffffffff), "0x0.fffffffffffffp-1022" },
    { UINT64_C(0x7fefffffffffffff), "0x1.fffffffffffffp+1023" },
    { UINT64_C(0x7ff0000000000000), "inf" },
    { UINT64_C(0xfff0000000000000), "-inf" },
    { UINT64_C(0x7ff8000000000000), "nan" },
    { UINT64_C(0x3fd5555555555555), "0x1.5555555555555p-2" },
    { UINT64_C(0x419d6f3454000000), "0x1.d6f3454000000p+26" },
    { UINT64_C(0x4090000000000000), "0x1.0000000000000p+10" },
    { UINT64_C(0x3fe8000000000000), "0x1.8000000000000p-1" },
    { UINT64_C(0x3ee4f8b588e368f1), "0x1.4f8b588e368f1p-17" },
    { UINT64_C(0xc0f0000800000000), "-0x1.0000800000000p+16" },
    { UINT64_C(0xfff8000000000000), "nan" },
    { UINT64_C(0x7ff0000000000001), "nan" },
    { UINT64_C(0x749882321e35049e), "0x1.882321e35049ep+842" },
    { UINT64_C(0x79c8c2926b94b5b5), "0x1.8c2926b94b5b5p+925" },
    { UINT64_C(0x4242aadbc8f429a4), "0x1.2aadbc8f429a4p+37" },
    { UINT64_C(0xeb7a79959588532d), "-0x1.a79959588532dp+696" },
    { UINT64_C(0x3cf3bd58da60fb1c), "0x1.3bd58da60fb1cp-48" },
    { UINT64_C(0x515c61236c88c537), "0x1.c61236c88c537p+278" },
    { UINT64_C(0xf4b1b64633be40f5), "-0x1.1b64633be40f5p+844" },
    { UINT64_C(0x88718c966f3d88f7), "-0x1.18c966f3d88f7p-888" },
    { UINT64_C(0xda1b195060c40eb7), "-0x1.b195060c40eb7p+418" },
    { UINT64_C(0x5b08acc213a5bf07), "0x1.8acc213a5bf07p+433" },
    { UINT64_C(0x6a5d670af9a3638e), "0x1.d670af9a3638ep+678" },
    { UINT64_C(0x4a894db7e48f12b9), "0x1.94db7e48f12b9p+169" },
    { UINT64_C(0xdabe22cad37b17c6), "-0x1.e22cad37b17c6p+428" },
    { UINT64_C(0x82b9bfbc91ba7257), "-0x1.9bfbc91ba7257p-980" },
    { UINT64_C(0x0cf197f45625871b), "0x1.197f45625871bp-816" },
    { UINT64_C(0xa5240b6020d0b29c), "-0x1.40b6020d0b29cp-429" },
    { UINT64_C(0xb4a3165de1ab3e01), "-0x1.3165de1ab3e01p-181" },
    { UINT64_C(0x400cb70f964e03c0), "0x1.cb70f964e03c0p+1" },
    { UINT64_C(0xe683acdf2060d7c4), "-0x1.3acdf2060d7c4p+617" },
    { UINT64_C(0x83d8e92df2adcc0e), "-0x1.8e92df2adcc0ep-962" },
    { UINT64_C(0x4f3d9a4de6cf02bb), "0x1.d9a4de6cf02bbp+244" },
    { UINT64_C(0xb039ee169646a718), "-0x1.9ee169646a718p-252" },
    { UINT64_C(0x135ab03d8de49eb1), "0x1.ab03d8de49eb1p-714" },
    { UINT64_C(0xe085b021e0d44f2b), "-0x1.5b021e0d44f2bp+521" },
    { UINT64_C(0xa6a86bd5a7550d23), "-0x1.86bd5a7550d23p-405" },
    { UINT64_C(0x428474c15e9ecba7), "0x1.474c15e9ecba7p+41" },
    { UINT64_C(0x69d6bd800bc49874), "0x1.6bd800bc49874p+670" },
    { UINT64_C(0x94a2de50ff542939), "-0x1.2de50ff542939p-693" },
    { UINT64_C(0xdcb25c12903c3ad2), "-0x1.25c12903c3ad2p+460" },
    { UINT64_C(0x764ae4d4359e9d02), "0x1.ae4d4359e9d02p+869" },
    { UINT64_C(0x959ba1690ce64264), "-0x1.ba1690ce64264p-678" },
    { UINT64_C(0x79fdda8fd41f125b), "0x1.dda8fd41f125bp+928" },
    { UINT64_C(0x4e5ac63a43514e2e), "0x1.ac63a43514e2ep+230" },
    { UINT64_C(0x167dd41a347a2e47), "0x1.dd41a347a2e47p-664" },
    { UINT64_C(0x23263c49440a9a11), "0x1.63c49440a9a11p-461" },
    { UINT64_C(0xa30354ef398bdedf), "-0x1.354ef398bdedfp-463" },
    { UINT64_C(0x98f01733d942b204), "-0x1.01733d942b204p-624" },
    { UINT64_C(0x67c8765c57810ce8), "0x1.8765c57810ce8p+637" },
    { UINT64_C(0x0df2d1aff1067dbd), "0x1.2d1aff1067dbdp-800" },
    { UINT64_C(0xa37f115c6a44f3cc), "-0x1.f115c6a44f3ccp-456" },
    { UINT64_C(0x4a7ce6e5f89c8d33), "0x1.ce6e5f89c8d33p+168" },
    { UINT64_C(0xa22fa1f725601b2f), "-0x1.fa1f725601b2fp-477" },
    { UINT64_C(0x1b39320448410fe3), "0x1.9320448410fe3p-588" },
    { UINT64_C(0x5043796d40618823), "0x1.3796d40618823p+261" },
    { UINT64_C(0xc58718296e887807), "-0x1.718296e887807p+89" },
    { UINT64_C(0x1098d6a904943815), "0x1.8d6a904943815p-758" },
    { UINT64_C(0x3a38b767352e4941), "0x1.8b767352e4941p-92" },
    { UINT64_C(0x9b19cdec60c9e347), "-0x1.9cdec60c9e347p-590" },
    { UINT64_C(0x780b86486a2a1812), "0x1.b86486a2a1812p+897" },
    { UINT64_C(0x8935b28fafb5454b), "-0x1.5b28fafb5454bp-876" },
    { UINT64_C(0xef8d8e8e32474e22), "-0x1.d8e8e32474e22p+761" },
    { UINT64_C(0x17cde531518bd8ab), "0x1.de531518bd8abp-643" },
    { UINT64_C(0x6d33ce50dcfe4bcc), "0x1.3ce50dcfe4bccp+724" },
    { UINT64_C(0xcfc2ffe4ed2261f1), "-0x1.2ffe4ed2261f1p+253" },
    { UINT64_C(0x89e0b9583a589e65), "-0x1.0b9583a589e65p-865" },
    { UINT64_C(0x3f0279a1abe7020e), "0x1.279a1abe7020ep-15" },
    { UINT64_C(0x46f6d2e1c91d6da3), "0x1.6d2e1c91d6da3p+112" },
    { UINT64_C(0xc10c2788a8e1f980), "-0x1.c2788a8e1f980p+17" },
    { UINT64_C(0x9e5d4d25c8ec9feb), "-0x1.d4d25c8ec9febp-538" },
    { UINT64_C(0xd703d5b062c4a228), "-0x1.3d5b062c4a228p+369" },
    { UINT64_C(0x7d3109bf6bd33d83), "0x1.109bf6bd33d83p+980" },
    { UINT64_C(0xc8bd8770d23ad2d9), "-0x1.d8770d23ad2d9p+140" },
    { UINT64_C(0x62f56763d5236ac1), "0x1.56763d5236ac1p+560" },
    { UINT64_C(0x26b8e5ba2d10a9f2), "0x1.8e5ba2d10a9f2p-404" },
    { UINT64_C(0x5439f75f10c01d5d), "0x1.9f75f10c01d5dp+324" },
    { UINT64_C(0xfd39265bb32e9ea1), "-0x1.9265bb32e9ea1p+980" },
    { UINT64_C(0x8ca4c608ef605abf), "-0x1.4c608ef605abfp-821" },
    { UINT64_C(0x616273cdd6a19e4f), "0x1.273cdd6a19e4fp+535" },
    { UINT64_C(0x40fc275e69b5220d), "0x1.c275e69b5220dp+16" },
    { UINT64_C(0xbb9d2ebef476092f), "-0x1.d2ebef476092fp-70" },
    { UINT64_C(0xc2d14e0a57e101e1), "-0x1.14e0a57e101e1p+46" },
    { UINT64_C(0x2f62323b36225fad), "0x1.2323b36225fadp-265" },
    { UINT64_C(0x8564f1dc632417c4), "-0x1.4f1dc632417c4p-937" },
    { UINT64_C(0x2e3d6a6340ed367e), "0x1.d6a6340ed367ep-284" },
    { UINT64_C(0x3a5f9ccdad9a6f2d), "0x1.f9ccdad9a6f2dp-90" },
    { UINT64_C(0x9713b93662cb4300), "-0x1.3b93662cb4300p-654" },
    { UINT64_C(0x248fcff28cc334f4), "0x1.fcff28cc334f4p-439" },
    { UINT64_C(0x9e8c1878d5464ac5), "-0x1.c1878d5464ac5p-535" },
    { UINT64_C(0x769799bacbebb741), "0x1.799bacbebb741p+874" },
    { UINT64_C(0x52bd78ee9ff29d16), "0x1.d78ee9ff29d16p+300" },
    { UINT64_C(0x168afe5e7d671459), "0x1.afe5e7d671459p-663" },
    { UINT64_C(0x670c22f05c9cb0ad), "0x1.c22f05c9cb0adp+625" },
    { UINT64_C(0xcc64498c8ee93884), "-0x1.4498c8ee93884p+199" },
    { UINT64_C(0xef5ead0be38a95e0), "-0x1.ead0be38a95e0p+758" },
    { UINT64_C(0x0e1908e532ae8f10), "0x1.908e532ae8f10p-798" },
    { UINT64_C(0x65feb06cdac1d38d), "0x1.eb06cdac1d38dp+608" },
    { UINT64_C(0x5654e963457642bd), "0x1.4e963457642bdp+358" },
    { UINT64_C(0x4d0d21a3710efc3f), "0x1.d21a3710efc3fp+209" },
    { UINT64_C(0xa2982e5b770e5f35), "-0x1.82e5b770e5f35p-470" },
    { UINT64_C(0xf230b77b1c4de493), "-0x1.0b77b1c4de493p+804" },
    { UINT64_C(0x036fcbe0d077e1be), "0x1.fcbe0d077e1bep-969" },
    { UINT64_C(0x087d804ebd29370d), "0x1.d804ebd29370dp-888" },
    { UINT64_C(0x7d66c01f47376eb4), "0x1.6c01f47376eb4p+983" },
    { UINT64_C(0x0ba75e632205dad7), "0x1.75e632205dad7p-837" },
    { UINT64_C(0x15ce2fd817781ac9), "0x1.e2fd817781ac9p-675" },
    { UINT64_C(0xfac19bd781637187), "-0x1.19bd781637187p+941" },
    { UINT64_C(0xd04883eb74645968), "-0x1.883eb74645968p+261" },
    { UINT64_C(0xa736357e8e82c020), "-0x1.6357e8e82c020p-396" },
    { UINT64_C(0x14f69a60f9d97768), "0x1.69a60f9d97768p-688" },
    { UINT64_C(0xa1a58ce83556173a), "-0x1.58ce83556173ap-485" },
    { UINT64_C(0x76067ae6ac125000), "0x1.67ae6ac125000p+865" },
    { UINT64_C(0xfe5dd6f65d04c969), "-0x1.dd6f65d04c969p+998" },
    { UINT64_C(0xa7e567e387ed23b1), "-0x1.567e387ed23b1p-385" },
    { UINT64_C(0x5d4a47ec58caa18c), "0x1.a47ec58caa18cp+469" },
    { UINT64_C(0x226a6c288814f4bf), "0x1.a6c288814f4bfp-473" },
    { UINT64_C(0x24b99aa4e600b110), "0x1.99aa4e600b110p-436" },
    { UINT64_C(0x6325af54a30a6e7a), "0x1.5af54a30a6e7ap+563" },
    { UINT64_C(0x0476dff0f4fbd348), "0x1.6dff0f4fbd348p-952" },
    { UINT64_C(0x7e6b74a0934c4538), "0x1.b74a0934c4538p+999" },
    { UINT64_C(0x8c5e5efd1d23e7fe), "-0x1.e5efd1d23e7fep-826" },
    { UINT64_C(0x34bea62d788c5f34), "0x1.ea62d788c5f34p-180" },
    { UINT64_C(0x8b79ec1a5a26fe7a), "-0x1.9ec1a5a26fe7ap-840" },
    { UINT64_C(0xa4296461beddd096), "-0x1.96461beddd096p-445" },
    { UINT64_C(0x509c253003678f48), "0x1.c253003678f48p+266" },
    { UINT64_C(0xe3f7b4ef51fb5227), "-0x1.7b4ef51fb5227p+576" },
    { UINT64_C(0xd3a71489888c3c0b), "-0x1.71489888c3c0bp+315" },
    { UINT64_C(0x851d62b5bd703358), "-0x1.d62b5bd703358p-942" },
    { UINT64_C(0x787b118631fd7a9d), "0x1.b118631fd7a9dp+904" },
    { UINT64_C(0xdda7e515e33a2538), "-0x1.7e515e33a2538p+475" },
    { UINT64_C(0x1e036ff5150fb7fd), "0x1.36ff5150fb7fdp-543" },
    { UINT64_C(0xb29bc6b33ac4414b), "-0x1.bc6b33ac4414bp-214" },
    { UINT64_C(0x65ce110a2689ae92), "0x1.e110a2689ae92p+605" },
    { UINT64_C(0xfd703b61aa80bb6c), "-0x1.03b61aa80bb6cp+984" },
    { UINT64_C(0xb2256110d660d13b), "-0x1.56110d660d13bp-221" },
    { UINT64_C(0x8a6e83734bc9404e), "-0x1.e83734bc9404ep-857" },
    { UINT64_C(0x993bb873540b742e), "-0x1.bb873540b742ep-620" },
    { UINT64_C(0x936cd61319c06515), "-0x1.cd61319c06515p-713" },
    { UINT64_C(0x5fdd3a168a6189a7), "0x1.d3a168a6189a7p+510" },
    { UINT64_C(0xf62e7330ba45cd54), "-0x1.e7330ba45cd54p+867" },
    { UINT64_C(0xe644c315c2cb1187), "-0x1.4c315c2cb1187p+613" },
    { UINT64_C(0xcfda60dc99517a7e), "-0x1.a60dc99517a7ep+254" },
    { UINT64_C(0x0e30277e50b7c84f), "0x1.0277e50b7c84fp-796" },
    { UINT64_C(0xd069212df802fea9), "-0x1.9212df802fea9p+263" },
    { UINT64_C(0x717eafff25aac128), "0x1.eafff25aac128p+792" },
    { UINT64_C(0x5b0f56452c0188bb), "0x1.f56452c0188bbp+433" },
    { UINT64_C(0xf6b8f116cc81737b), "-0x1.8f116cc81737bp+876" },
    { UINT64_C(0x092469ae194a5491), "0x1.469ae194a5491p-877" },
    { UINT64_C(0x8f841a8ab31f4e8b), "-0x1.41a8ab31f4e8bp-775" },
    { UINT64_C(0x18498d8838794684), "0x1.98d8838794684p-635" },
    { UINT64_C(0xde065c4329c739a0), "-0x1.65c4329c739a0p+481" },
    { UINT64_C(0x1d1d95e1ad61682b), "0x1.d95e1ad61682bp-558" },
    { UINT64_C(0x63c7fe352f6d7f84), "0x1.7fe352f6d7f84p+573" },
    { UINT64_C(0x493544ec8f808c2a), "0x1.544ec8f808c2ap+148" },
    { UINT64_C(0xf631206795ac08c8), "-0x1.1206795ac08c8p+868" },
    { UINT64_C(0x87847ff4a1cb8b0a), "-0x1.47ff4a1cb8b0ap-903" },
    { UINT64_C(0x4cb9d2a2e639167b), "0x1.9d2a2e639167bp+204" },
    { UINT64_C(0x38b6a352e2ff5520), "0x1.6a352e2ff5520p-116" },
    { UINT64_C(0xf12e90595ea39278), "-0x1.e90595ea39278p+787" },
    { UINT64_C(0x293afcb7751f5f5f), "0x1.afcb7751f5f5fp-364" },
    { UINT64_C(0xe676f5d252f0a7f6), "-0x1.6f5d252f0a7f6p+616" },
    { UINT64_C(0x800faaad0748850f), "-0x0.faaad0748850fp-1022" },
    { UINT64_C(0x0002ac1fc43ae8dd), "0x0.2ac1fc43ae8ddp-1022" },
    { UINT64_C(0x8009ed8890a70b10), "-0x0.9ed8890a70b10p-1022" },
    { UINT64_C(0x0006cdfd8fe6d6a4), "0x0.6cdfd8fe6d6a4p-1022" },
    { UINT64_C(0x000e4169ea4f0468), "0x0.e4169ea4f0468p-1022" },
    { UINT64_C(0x80043986366e180f), "-0x0.43986366e180fp-1022" },
    { UINT64_C(0x000ed61eaa94cfa4), "0x0.ed61eaa94cfa4p-1022" },
    { UINT64_C(0x8009e1e2642b5dfc), "-0x0.9e1e2642b5dfcp-1022" },
    { UINT64_C(0x0008fc7a136b14bf), "0x0.8fc7a136b14bfp-1022" },
    { UINT64_C(0x8005c080c76ca691), "-0x0.5c080c76ca691p-1022" },
    { UINT64_C(0x8005bc0f71ea75ec), "-0x0.5bc0f71ea75ecp-1022" },
    { UINT64_C(0x8006a13f819a4670), "-0x0.6a13f819a4670p-1022" },
    { UINT64_C(0x8009729d4e79c5f9), "-0x0.9729d4e79c5f9p-1022" },
    { UINT64_C(0x00037d8892d5907c), "0x0.37d8892d5907cp-1022" },
    { UINT64_C(0x000a4bed727125b1), "0x0.a4bed727125b1p-1022" },
    { UINT64_C(0x80075eb6d7fd0450), "-0x0.75eb6d7fd0450p-1022" },
    { UINT64_C(0x800512cfc5ee21f7), "-0x0.512cfc5ee21f7p-1022" },
    { UINT64_C(0x800ec7c851d7d763), "-0x0.ec7c851d7d763p-1022" },
    { UINT64_C(0x000121de9d20de26), "0x0.121de9d20de26p-1022" },
    { UINT64_C(0x000a2d634eff06e9), "0x0.a2d634eff06e9p-1022" },
    { UINT64_C(0x800b6d2b29ab23a5), "-0x0.b6d2b29ab23a5p-1022" },
    { UINT64_C(0x00096ab8a99110a2), "0x0.96ab8a99110a2p-1022" },
    { UINT64_C(0x000e693f8a8060e7), "0x0.e693f8a8060e7p-1022" },
    { UINT64_C(0x000a85f055d69771), "0x0.a85f055d69771p-1022" },
    { UINT64_C(0x000ddc90b14ffd17), "0x0.ddc90b14ffd17p-1022" },
    { UINT64_C(0x000ba18a3be9898d), "0x0.ba18a3be9898dp-1022" },
    { UINT64_C(0x8007094cd979f2e0), "-0x0.7094cd979f2e0p-1022" },
    { UINT64_C(0x800f079da8be297c), "-0x0.f079da8be297cp-1022" },
    { UINT64_C(0x80065234e37af0d3), "-0x0.65234e37af0d3p-1022" },
    { UINT64_C(0x000c388738b04807), "0x0.c388738b04807p-1022" },
    { UINT64_C(0x000b4baf85eb78cd), "0x0.b4baf85eb78cdp-1022" },
    { UINT64_C(0x8000579f62de90a9), "-0x0.0579f62de90a9p-1022" },
    { UINT64_C(0x000be8830d6cf9f3), "0x0.be8830d6cf9f3p-1022" },
    { UINT64_C(0x000f18bb427841fc), "0x0.f18bb427841fcp-1022" },
    { UINT64_C(0x000da50caf85f504), "0x0.da50caf85f504p-1022" },
    { UINT64_C(0x800ea6e430e7099c), "-0x0.ea6e430e7099cp-1022" },
    { UINT64_C(0x800b5ed4bd385458), "-0x0.b5ed4bd385458p-1022" },
    { UINT64_C(0x8001615c4e78cabe), "-0x0.1615c4e78cabep-1022" },
    { UINT64_C(0x8007d3dceb890ed2), "-0x0.7d3dceb890ed2p-1022" },
    { UINT64_C(0x8008271053ff17a6), "-0x0.8271053ff17a6p-1022" },
    { UINT64_C(0x800a09d4d11bfcc8), "-0x0.a09d4d11bfcc8p-1022" },
    { UINT64_C(0x000d9319974bec8d), "0x0.d9319974bec8dp-1022" },
    { UINT64_C(0x000df22a0dab202b), "0x0.df22a0dab202bp-1022" },
    { UINT64_C(0x800f8a38fb7142c1), "-0x0.f8a38fb7142c1p-1022" },
    { UINT64_C(0x00072c60c4b488cd), "0x0.72c60c4b488cdp-1022" },
    { UINT64_C(0x800c53228e7e003b), "-0x0.c53228e7e003bp-1022" },
    { UINT64_C(0x000281261999686e), "0x0.281261999686ep-1022" },
    { UINT64_C(0x8003c962210e33d5), "-0x0.3c962210e33d5p-1022" },
    { UINT64_C(0x000569400f4704bc), "0x0.569400f4704bcp-1022" },
    { UINT64_C(0x80045b3d8f9cfdb7), "-0x0.45b3d8f9cfdb7p-1022" },
    { UINT64_C(0xbfc8b6c1d8ded1a5), "-0x1.8b6c1d8ded1a5p-3" },
    { UINT64_C(0x3fbc4a4f210ad81c), "0x1.c4a4f210ad81cp-4" },
    { UINT64_C(0xbf91321fe3966fc0), "-0x1.1321fe3966fc0p-6" },
    { UINT64_C(0xbfc2e9aa1aeb835c), "-0x1.2e9aa1aeb835cp-3" },
    { UINT64_C(0xbf7e7e1f561d5760), "-0x1.e7e1f561d5760p-8" },
    { UINT64_C(0x3fb6fbb6207f184c), "0x1.6fbb6207f184cp-4" },
    { UINT64_C(0x3fa5a1d9c7e01688), "0x1.5a1d9c7e01688p-5" },
    { UINT64_C(0xbfa326e4a68d2d0c), "-0x1.326e4a68d2d0cp-5" },
    { UINT64_C(0xbfc3c25c9798b2cf), "-0x1.3c25c9798b2cfp-3" },
    { UINT64_C(0x3f9630f4c7f4fcb0), "0x1.630f4c7f4fcb0p-6" },
    { UINT64_C(0x3fc75e2d0040171c), "0x1.75e2d0040171cp-3" },
    { UINT64_C(0x3fa1876fcdbe4908), "0x1.1876fcdbe4908p-5" },
    { UINT64_C(0xbf702221e403e900), "-0x1.02221e403e900p-8" },
    { UINT64_C(0x3fad69b4c4d5d5f0), "0x1.d69b4c4d5d5f0p-5" },
    { UINT64_C(0x3fadddf297807ca0), "0x1.dddf297807ca0p-5" },
    { UINT64_C(0xbfc0eb303bf15418), "-0x1.0eb303bf15418p-3" },
    { UINT64_C(0x3fc659b349fa4d22), "0x1.659b349fa4d22p-3" },
    { UINT64_C(0x3fc9488d2cbfa1ae), "0x1.9488d2cbfa1aep-3" },
    { UINT64_C(0xbfb5cf76bfc117d7), "-0x1.5cf76bfc117d7p-4" },
    { UINT64_C(0xbfa0fa956d3d21e0), "-0x1.0fa956d3d21e0p-5" },
    { UINT64_C(0xbfbc4805d737a734), "-0x1.c4805d737a734p-4" },
    { UINT64_C(0xbfba96dd8738843a), "-0x1.a96dd8738843ap-4" },
    { UINT64_C(0x3f415b48d7097200), "0x1.15b48d7097200p-11" },
    { UINT64_C(0xbfb1a81d5fd6ddaa), "-0x1.1a81d5fd6ddaap-4" },
    { UINT64_C(0x3fc8e3c1d4c1315e), "0x1.8e3c1d4c1315ep-3" },
    { UINT64_C(0x3fc1dcffc9d7b72e), "0x1.1dcffc9d7b72ep-3" },
    { UINT64_C(0x3f7ddb3e3fa63300), "0x1.ddb3e3fa63300p-8" },
    { UINT64_C(0x3fa31b2f44ab9b0c), "0x1.31b2f44ab9b0cp-5" },
    { UINT64_C(0x3fb8b6c378e808f8), "0x1.8b6c378e808f8p-4" },
    { UINT64_C(0xbfad4b2df8472294), "-0x1.d4b2df8472294p-5" },
    { UINT64_C(0xbfb0710f6d03d580), "-0x1.0710f6d03d580p-4" },
    { UINT64_C(0x3fbe4bd7df8bc2ec), "0x1.e4bd7df8bc2ecp-4" },
    { UINT64_C(0xbfb911e64e4b09fa), "-0x1.911e64e4b09fap-4" },
    { UINT64_C(0xbfb63f3ad1d6dc3a), "-0x1.63f3ad1d6dc3ap-4" },
    { UINT64_C(0xbfb782b8b6ad747a), "-0x1.782b8b6ad747ap-4" },
    { UINT64_C(0x3fc626391463df1a), "0x1.626391463df1ap-3" },
    { UINT64_C(0xbfc8a707a3b0fe92), "-0x1.8a707a3b0fe92p-3" },
    { UINT64_C(0x3fc1470683a32820), "0x1.1470683a32820p-3" },
    { UINT64_C(0x3fb87b4d4a358b38), "0x1.87b4d4a358b38p-4" },
    { UINT64_C(0xbfc776c2778338e5), "-0x1.776c2778338e5p-3" },
    { UINT64_C(0x3fc26f0488d44aa6), "0x1.26f0488d44aa6p-3" },
    { UINT64_C(0x3fc31cb35cce387a), "0x1.31cb35cce387ap-3" },
    { UINT64_C(0x3f8c358751d3f4a0), "0x1.c358751d3f4a0p-7" },
    { UINT64_C(0xbf9e89ac0aa7bf90), "-0x1.e89ac0aa7bf90p-6" },
    { UINT64_C(0xbfa793d9a462cb74), "-0x1.793d9a462cb74p-5" },
    { UINT64_C(0x3fc24e87efd159b6), "0x1.24e87efd159b6p-3" },
    { UINT64_C(0x3fabb611471980b0), "0x1.bb611471980b0p-5" },
    { UINT64_C(0xbfc0d02437de1aa6), "-0x1.0d02437de1aa6p-3" },
    { UINT64_C(0x3fb01019c26767c4), "0x1.01019c26767c4p-4" },
    { UINT64_C(0x3fc0841cfdcfe2ca), "0x1.0841cfdcfe2cap-3" },
    { UINT64_C(0xbfb4085b0d66492d), "-0x1.4085b0d66492dp-4" },
    { UINT64_C(0x3fb8e613e0666114), "0x1.8e613e0666114p-4" },
    { UINT64_C(0xbfc1bbde3641d760), "-0x1.1bbde3641d760p-3" },
    { UINT64_C(0xbf86324b9201e2d0), "-0x1.6324b9201e2d0p-7" },
    { UINT64_C(0xbfbd61951dab0377), "-0x1.d61951dab0377p-4" },
    { UINT64_C(0xbfbb258b390361b4), "-0x1.b258b390361b4p-4" },
    { UINT64_C(0xbfb11b616295c4ae), "-0x1.11b616295c4aep-4" },
    { UINT64_C(0xbfc0280c39eaa0d5), "-0x1.0280c39eaa0d5p-3" },
    { UINT64_C(0x3fc5d335e51da82c), "0x1.5d335e51da82cp-3" },
    { UINT64_C(0xbf9466b6381cf390), "-0x1.466b6381cf390p-6" },
    { UINT64_C(0x3fbaf15f959987d4), "0x1.af15f959987d4p-4" },
    { UINT64_C(0x3fc80b0cb590f568), "0x1.80b0cb590f568p-3" },
    { UINT64_C(0xbfa5e159fa0cd2f4), "-0x1.5e159fa0cd2f4p-5" },
    { UINT64_C(0x3fa4147a6fe94174), "0x1.4147a6fe94174p-5" },
    { UINT64_C(0xbfc3ff7b5c9ac01c), "-0x1.3ff7b5c9ac01cp-3" },
    { UINT64_C(0x3fc7c8eed95f3ea6), "0x1.7c8eed95f3ea6p-3" },
    { UINT64_C(0x3fb1d5b76692ff08), "0x1.1d5b76692ff08p-4" },
    { UINT64_C(0x3fc5066779aac52a), "0x1.5066779aac52ap-3" },
    { UINT64_C(0x3fc50d199192dbe2), "0x1.50d199192dbe2p-3" },
    { UINT64_C(0x3fc5f42d89febece), "0x1.5f42d89febecep-3" },
    { UINT64_C(0x3fc684398f646536), "0x1.684398f646536p-3" },
    { UINT64_C(0xbfc37df9d2794958), "-0x1.37df9d2794958p-3" },
    { UINT64_C(0xbfb7012ed3418c9a), "-0x1.7012ed3418c9ap-4" },
    { UINT64_C(0xbfb2ace104eac870), "-0x1.2ace104eac870p-4" },
    { UINT64_C(0x3fa8ad51e5878dd4), "0x1.8ad51e5878dd4p-5" },
    { UINT64_C(0xbfc77a60e611fa82), "-0x1.77a60e611fa82p-3" },
    { UINT64_C(0x3fc638d0fc23d42e), "0x1.638d0fc23d42ep-3" },
    { UINT64_C(0xbfb9403b3ed97ea0), "-0x1.9403b3ed97ea0p-4" },
    { UINT64_C(0x3fc6ff60def656c8), "0x1.6ff60def656c8p-3" },
    { UINT64_C(0xbfbd170d34ff6f37), "-0x1.d170d34ff6f37p-4" },
};

Test(ids, py_float_hex_matches_python_for_306_doubles)
{
    for (size_t i = 0; i < sizeof FLOAT_CASES / sizeof FLOAT_CASES[0]; i++) {
        double x;
        char s[DP_PY_FLOAT_HEX_SIZE];
        memcpy(&x, &FLOAT_CASES[i].bits, sizeof x);
        size_t n = dp_py_float_hex(x, s);
        cr_assert_str_eq(s, FLOAT_CASES[i].hex, "bits 0x%016llx", (unsigned long long)FLOAT_CASES[i].bits);
        cr_assert_eq(n, strlen(s));
    }
}

Test(ids, vector_sha_matches_spec_vector)
{
    const double v[] = { 0.1, 0.2, 0.3, 0.4, 0.5 };
    char hex[DP_SHA256_HEX_SIZE];
    cr_assert_eq(dp_vector_sha256(v, 5, hex), DP_OK);
    cr_assert_str_eq(hex, "13c02d9891e9878b1ea956ea3a26e8199eb27d3ed500afa2b03a7ce0e4aca6bf");
}

Test(ids, vector_sha_of_a_1536_dim_vector_matches_python)
{
    double v[1536];
    char hex[DP_SHA256_HEX_SIZE];
    for (int i = 0; i < 1536; i++)
        v[i] = (i - 768) / 1000.0;
    dp_vector_sha256(v, 1536, hex);
    cr_assert_str_eq(hex, "1f8ee31932f8585351e50592984393bcb7c53f2c5513e7eea1f81a97e5820adf");  /* from python3 */
}

Test(ids, vector_sha_of_an_empty_vector_is_the_empty_digest)
{
    char hex[DP_SHA256_HEX_SIZE];
    dp_vector_sha256(NULL, 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* float.hex() always writes 13 hex digits, as C's "%.13a" does for every
 * finite non-zero double (subnormals "0x0.<m>p-1022" too).  Widened
 * float32s (every vector element) take a shorter path: both paths are
 * checked against it over many values. */
Test(ids, py_float_hex_agrees_with_printf_on_widened_floats_and_doubles)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    char got[DP_PY_FLOAT_HEX_SIZE], want[64];
    int widened = 0;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        if (i % 2) {
            uint32_t fb = (uint32_t)(x >> 32);
            float f;
            memcpy(&f, &fb, 4);
            d = f;
        } else {
            memcpy(&d, &x, 8);
        }
        if (!isfinite(d) || d == 0.0)
            continue;
        uint64_t bits;
        memcpy(&bits, &d, 8);
        widened += (bits & 0xfffffff) == 0;
        size_t n = dp_py_float_hex(d, got);
        snprintf(want, sizeof(want), "%.13a", d);
        cr_assert_str_eq(got, want, "bits 0x%016llx", (unsigned long long)bits);
        cr_assert_eq(n, strlen(want));
    }
    cr_assert_gt(widened, 90000, "the float32 path was taken");
}
