/*
 * test_chunker: the "markdown-simple" chunker and the embedding batch
 * planner behave exactly like the original _generate_chunks() and
 * _create_micro_batches(), quirks included.
 *
 * Tables marked "from python3" come from running the original's algorithm in
 * CPython 3 on the same inputs.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chunker.h"
#include "ids.h"

#include "unit/support_lcg.h"

static dp_chunk_list chunk_ok(const char *text)
{
    dp_chunk_list list;
    char err[128] = "";
    dp_err rc = dp_chunk_markdown(text, strlen(text), &list, err, sizeof err);
    cr_assert_eq(rc, DP_OK, "chunker failed: %s", err);
    return list;
}

static void assert_chunk(const dp_chunk_list *l, size_t i, const char *text,
                         size_t start_line, size_t end_line)
{
    cr_assert_lt(i, l->count);
    const dp_chunk *c = &l->items[i];
    cr_assert_eq(c->ord, i);
    cr_assert_str_eq(c->text, text, "chunk %zu", i);
    cr_assert_eq(c->text_len, strlen(text));
    cr_assert_eq(c->start_line, start_line, "chunk %zu start_line %zu", i, c->start_line);
    cr_assert_eq(c->end_line, end_line, "chunk %zu end_line %zu", i, c->end_line);
    char sha[DP_SHA256_HEX_SIZE];
    dp_sha256_hex(text, strlen(text), sha);
    cr_assert_str_eq(c->sha256, sha);
}

/* ---- the spec example ---------------------------------------------------- */

#define SPEC_TEXT "# Document Title\n\nThis is the first paragraph.\n\n## Section 1\n" \
                  "Content for section 1.\n\n## Section 2\nContent for section 2.\n\n" \
                  "More content here."

Test(chunker, spec_example_gives_the_four_chunks_of_the_spec)
{
    dp_chunk_list l = chunk_ok(SPEC_TEXT);
    cr_assert_eq(l.count, 4);
    assert_chunk(&l, 0, "# Document Title", 0, 1);
    assert_chunk(&l, 1, "This is the first paragraph.\n\n## Section 1", 20, 24);
    assert_chunk(&l, 2, "Content for section 1.\n\n## Section 2", 40, 43);
    assert_chunk(&l, 3, "Content for section 2.\n\nMore content here.", 60, 63);
    dp_chunk_list_free(&l);
}

Test(chunker, spec_example_chunk_shas_and_ids_match_python)
{
    static const char *const sha[] = {  /* from python3 */
        "9287087d898e06624a7b3284c64dad521cbc3d4e97f508d202e905a378e8c56a",
        "5c5404317f1d52f36951817fe4bd009406f85faae0f202b04123ad5e3d2b6a49",
        "2575dfb0a1b4759cefae178ef8c9bd82983b1ac80c4fd211e9adb5303435e6a0",
        "9a728a79172f0763ef9e1600695e05e98ee4844cf266f19acea5f6ffdead9fc9",
    };
    static const char *const ids[] = {  /* ord 0 and 1 are the spec's vectors */
        "1153de6e-d6a0-575a-b811-3a0a24059264", "c9cd6a9e-4548-55e2-871f-4de91a2d89d8",
        "b05dfebc-0576-5f2d-8556-9c0c67eda0a4", "78a1979c-35ac-5667-ae33-6a80dfc2e48a",
    };
    dp_chunk_list l = chunk_ok(SPEC_TEXT);
    for (size_t i = 0; i < l.count; i++) {
        char id[DP_UUID_STR_SIZE];
        cr_assert_str_eq(l.items[i].sha256, sha[i]);
        dp_chunk_id("00000000-0000-0000-0000-000000000001", DP_CHUNKER_NAME,
                    DP_CHUNKER_DEFAULT_VERSION, l.items[i].ord, id, NULL, 0);
        cr_assert_str_eq(id, ids[i]);
    }
    dp_chunk_list_free(&l);
}

/* ---- the rules ------------------------------------------------------------- */

Test(chunker, heading_ends_the_chunk_it_joins)
{
    dp_chunk_list l = chunk_ok("intro\nmore intro\n# Heading\nbody");
    cr_assert_eq(l.count, 2);
    assert_chunk(&l, 0, "intro\nmore intro\n# Heading", 0, 3);
    assert_chunk(&l, 1, "body", 20, 21);
    dp_chunk_list_free(&l);
}

Test(chunker, only_a_hash_at_the_very_start_of_a_line_is_a_heading)
{
    dp_chunk_list l = chunk_ok("a\n  # indented\ntext with # inside\n#tag");
    cr_assert_eq(l.count, 1);
    assert_chunk(&l, 0, "a\n  # indented\ntext with # inside\n#tag", 0, 4);
    dp_chunk_list_free(&l);
}

Test(chunker, chunk_is_flushed_after_20_lines_with_quirky_line_numbers)
{
    char text[45 * 8 + 1] = "";
    for (int i = 0; i < 45; i++)
        sprintf(text + strlen(text), "L%02d\n", i);
    text[strlen(text) - 1] = '\0';          /* 45 lines, no trailing '\n' */
    dp_chunk_list l = chunk_ok(text);
    cr_assert_eq(l.count, 3);
    cr_assert(strncmp(l.items[0].text, "L00\n", 4) == 0);
    cr_assert(strcmp(l.items[0].text + l.items[0].text_len - 3, "L19") == 0);
    cr_assert(strncmp(l.items[1].text, "L20\n", 4) == 0);
    cr_assert_str_eq(l.items[2].text, "L40\nL41\nL42\nL43\nL44");
    cr_assert_eq(l.items[0].start_line, 0);
    cr_assert_eq(l.items[0].end_line, 20);
    cr_assert_eq(l.items[1].start_line, 20);
    cr_assert_eq(l.items[1].end_line, 40);
    cr_assert_eq(l.items[2].start_line, 40);
    cr_assert_eq(l.items[2].end_line, 45);
    dp_chunk_list_free(&l);
}

Test(chunker, meta_lines_count_emitted_chunks_not_real_lines)
{
    /* 3 short chunks: real lines 0-1, 2-3, 4; meta says 0-2, 20-22, 40-41 */
    dp_chunk_list l = chunk_ok("a\n# A\nb\n# B\nc");
    cr_assert_eq(l.count, 3);
    assert_chunk(&l, 0, "a\n# A", 0, 2);
    assert_chunk(&l, 1, "b\n# B", 20, 22);
    assert_chunk(&l, 2, "c", 40, 41);
    dp_chunk_list_free(&l);
}

Test(chunker, whitespace_only_chunks_are_dropped_without_using_an_ord)
{
    /* 20 blank-ish lines form an empty chunk; then "  \n#" style empties */
    char text[256] = "";
    for (int i = 0; i < 20; i++)
        strcat(text, i % 2 ? " \t\n" : "\r\n");
    strcat(text, "first\n# H\n   \n\t\n#\nsecond");
    dp_chunk_list l = chunk_ok(text);
    cr_assert_eq(l.count, 3);
    assert_chunk(&l, 0, "first\n# H", 0, 2);    /* ord 0 although chunk #2 of the walk */
    assert_chunk(&l, 1, "#", 20, 23);           /* "   \n\t\n#" strips to "#" */
    assert_chunk(&l, 2, "second", 40, 41);
    dp_chunk_list_free(&l);
}

Test(chunker, a_blank_chunk_between_headings_does_not_shift_ords)
{
    dp_chunk_list l = chunk_ok("# A\n \n\xc2\xa0\n\n# \n# B");
    /* "# A" | " \n\u00a0\n\n# " strips to "#" | "# B" */
    cr_assert_eq(l.count, 3);
    assert_chunk(&l, 0, "# A", 0, 1);
    assert_chunk(&l, 1, "#", 20, 24);
    assert_chunk(&l, 2, "# B", 40, 41);
    dp_chunk_list_free(&l);
}

Test(chunker, trailing_newline_and_trailing_heading_add_no_chunk)
{
    dp_chunk_list l = chunk_ok("body\n# End\n");
    cr_assert_eq(l.count, 1);
    assert_chunk(&l, 0, "body\n# End", 0, 2);
    dp_chunk_list_free(&l);
}

Test(chunker, crlf_lines_keep_their_cr_except_at_chunk_ends)
{
    dp_chunk_list l = chunk_ok("# Title\r\nline one\r\nline two\r\n");
    cr_assert_eq(l.count, 2);
    assert_chunk(&l, 0, "# Title", 0, 1);
    assert_chunk(&l, 1, "line one\r\nline two", 20, 23);
    dp_chunk_list_free(&l);
}

Test(chunker, a_lone_cr_is_not_a_line_break)
{
    dp_chunk_list l = chunk_ok("text\r# not a heading\rmore");
    cr_assert_eq(l.count, 1);
    assert_chunk(&l, 0, "text\r# not a heading\rmore", 0, 1);
    dp_chunk_list_free(&l);
}

Test(chunker, content_need_not_be_nul_terminated)
{
    const char buf[] = { '#', ' ', 'A', '\n', 'b', 'X' };
    dp_chunk_list l;
    cr_assert_eq(dp_chunk_markdown(buf, 5, &l, NULL, 0), DP_OK);
    cr_assert_eq(l.count, 2);
    assert_chunk(&l, 0, "# A", 0, 1);
    assert_chunk(&l, 1, "b", 20, 21);
    dp_chunk_list_free(&l);
}

Test(chunker, empty_content_is_an_error_with_the_original_message)
{
    const char *inputs[] = { "", "\n", "   \n\t\n\r\n", "\xe3\x80\x80\n\xc2\xa0" };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        dp_chunk_list l;
        char err[128] = "";
        cr_assert_eq(dp_chunk_markdown(inputs[i], strlen(inputs[i]), &l, err, sizeof err),
                     DP_ERR_PERMANENT, "case %zu", i);
        cr_assert_str_eq(err, "No chunks generated from parsed content");
        cr_assert_eq(l.count, 0);
        cr_assert_null(l.items);
        dp_chunk_list_free(&l);             /* safe on the error result */
    }
    dp_chunk_list l;
    cr_assert_eq(dp_chunk_markdown(NULL, 0, &l, NULL, 0), DP_ERR_PERMANENT);
}

/* ---- differential against python ---------------------------------------- */

/* lcg_doc: the generator shared with the python3 tables (support_lcg.c). */

struct lcg_chunk { int seed; uint32_t ord; size_t start_line, end_line; const char *sha; };

/* from python3: _generate_chunks(lcg_doc(seed, 40 + 7*seed)) for seeds 1..40 */
static const struct lcg_chunk LCG_CHUNKS[] = {
    { 1, 0, 0, 9, "08a7bef217f375924a8280e94cacb97423e0899833a23824a08f3b154a25c559" },
    { 2, 0, 0, 6, "6f5e804684d1d59e15f6d987a58be4d2f80cdfbfdfbedcaf241b9ba2501d8815" },
    { 3, 0, 0, 1, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 3, 1, 20, 21, "6b55e5003375a744f57c20e9be8ce16e57e117babd0be691316966aba2030335" },
    { 3, 2, 40, 42, "ae2b19ecaed02c837307f5fdb2a2501a7ebc79ae3a00b0ec7bde33c999a4db84" },
    { 3, 3, 60, 62, "948cc65446c57a9442e8b6ea583e5b199f2026322f5862ea50c94eaa33fe22f2" },
    { 3, 4, 80, 85, "a7e66b9a7ffb3b624c6e1d1c9934e15075e8b8330961812dc627f2bff6bc842b" },
    { 3, 5, 100, 103, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 3, 6, 120, 127, "19794cdcb7c00a7e7ed299ac4a1bcaa86a29e46fe7cfca0b720b721b9bcaa40d" },
    { 4, 0, 0, 13, "6261a56330d9e590cb53b29cf014be5093208563752310557bfb26ae2fbaf81a" },
    { 4, 1, 20, 23, "60de31d5e4dc2bb96c76090a156e396546b9c2e26b004da0a679a1882557c180" },
    { 5, 0, 0, 3, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 5, 1, 20, 23, "b84918df3401694ccd9e45882b0cc8855109bc07554395c4e8f6203ee1a524e1" },
    { 5, 2, 40, 43, "cbb83b9d0812d6e4e7edd3ef3eccfffe4686efc51c44e8ef68a3524e0c65dd57" },
    { 5, 3, 60, 61, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 5, 4, 80, 85, "866d6fd271f4fde03e650b59c09650ef0e01efab77e4cf120abd8b58c77d7483" },
    { 5, 5, 100, 113, "ab15a96918c57a9bfdfce03d2e8e33fc3594205a99afe1ba3f792d378514f01b" },
    { 6, 0, 0, 4, "fafffd2bd1adae72f197f6359a0ffb63b66d3d05b23ffefaec26010885b6303f" },
    { 6, 1, 20, 27, "938a819536ad774356ecb1cfb8709dfaa0e3884786fa43767e4d9fc2af48987e" },
    { 6, 2, 40, 49, "3cb5d7149d84a375d21df20def2a1a75dde97c83a7cc64a0cf01a35450f9980a" },
    { 7, 0, 0, 4, "a52407d76117d7d52716decd1e897ce6baa658ebea88f2d74f8754791e8368ee" },
    { 7, 1, 20, 34, "d01cdafd93e4c02585c1e4dcaad7f5cf2227725c7536c51537fbfe9290601c3b" },
    { 7, 2, 40, 43, "db2477828030a9e197e962ab153eb2bee34b7c11034a2fd4e3837bf4ed85ce2f" },
    { 8, 0, 0, 1, "f54a936d019c009bd5fc2969e7b39f78d1c4d37cf3b664ea14d3a9c27d918c40" },
    { 8, 1, 20, 39, "fa30db23ce38f0c22814deafbde860bf2577cec9fa960f09ef53c1de34539ee4" },
    { 8, 2, 40, 43, "6da831d173c005830d9674b26c7c46cab282930b5e78997f7b0879959f59ba4b" },
    { 9, 0, 0, 1, "f7f7057ca9cc021be8b80fa01473208e647fa1e09a791198b4d468ecc9432e71" },
    { 9, 1, 20, 23, "0129109cfd153c72b1b4b3ce5aab7be3ec62b3c931ac262f470ca8c55923322e" },
    { 9, 2, 40, 42, "db705811defd247769be602fa602cd23cfd373322c8494ebc8aa11519a636cea" },
    { 9, 3, 60, 65, "4f6703fe571bd39b6f89821a8deb7b04175a098681d495df4f457d6f34f70689" },
    { 9, 4, 80, 84, "a5225491cdc909d4ecb855ef9d11b5906531a052b098018b4daea5a8955452d6" },
    { 9, 5, 100, 104, "79744aca0103b1a1471054312c1e35ee84183919daf5849ea85eedd3fdc5df7b" },
    { 9, 6, 120, 122, "f06dce27b84e18ccb3c7e94a0679c279cd42027da23bcf1e1ca1f94e365ea420" },
    { 10, 0, 0, 12, "4a597a4e8c5148d5ecddf5e6866814c44875fb28c9b1d309125ee05498a19243" },
    { 10, 1, 20, 21, "dc4f02e0797c531e93f0cb351bf289c97fe1dec7036831820cda91116cf3d0ae" },
    { 10, 2, 40, 59, "7810759ae02de7b084f6893b08eabd33f0db9063d36bf7c5bc8f7723a098d019" },
    { 11, 0, 0, 3, "56211f7ae05cc693159f9f75321191afd8afced28caa75a95f99a5b549d352a8" },
    { 11, 1, 20, 24, "9869bb1ae6775f639ae6dc6e1906bf085e67658c7e4de5d38a61e630191686d9" },
    { 11, 2, 40, 51, "3bdf14dd22d2aa373124d34b943b866cc7e1b23d5da1cfedad183c8fb339a09b" },
    { 11, 3, 60, 63, "dfbaca09f4bb642533d0c01395f192b39a573a6055d883a2bff66b476d2c11ec" },
    { 11, 4, 80, 87, "1899e5df75ef6aaefe19d7ccc48341b4424c120ad942ec41be72fbcf5ca9af92" },
    { 11, 5, 100, 106, "8d2a2b10514d3a4f729df3eabcea1ef70b17d85f808fde391c87eaf39f4f0d1a" },
    { 11, 6, 120, 121, "334359b90efed75da5f0ada1d5e6b256f4a6bd0aee7eb39c0f90182a021ffc8b" },
    { 11, 7, 140, 149, "ccc5ecfd3d1c3f74988e095a38369cee50445dac76e44cc7673509539fbb0357" },
    { 12, 0, 0, 11, "83ecaa7720159e2dca76523cfd18a5d1dea3d313963abe955ab4b8258bcf8426" },
    { 12, 1, 20, 24, "1118e926f05e61e925f0c8e48766756784bbb39e8e126eecf79a6746825d3d90" },
    { 12, 2, 40, 45, "83a0ba1ed2e6dc2f0fee028175f2f51fc2524f205f85059dc19bcbf18f62c59e" },
    { 12, 3, 60, 62, "f3959b10200783afdb6fd9723a6174958dfd1a5c5a57e337bedea3e790cf813d" },
    { 12, 4, 80, 87, "476f15056f863fa7c801e6be38b13d2f21f324276beaea56564cb11df2fd7294" },
    { 12, 5, 100, 103, "34736c8c314f1999863651d67dca06d61815bbc96ebc9759eccb8520d06e2cf1" },
    { 12, 6, 120, 121, "ae2b19ecaed02c837307f5fdb2a2501a7ebc79ae3a00b0ec7bde33c999a4db84" },
    { 13, 0, 0, 18, "6bddcde20d24f42bdd26adaa7db9c4dc5f56b3dc843400bec2efce4de7774a00" },
    { 13, 1, 20, 24, "50f2e4336e62a16e0a9ea9922d9dd1b8623f5a0d1e1d9314700b86b1f890534e" },
    { 13, 2, 40, 54, "7d58d4a035b9acd5d19b60044bf2e9b75a76fa50e0fb7f80ae010bb6d251e8fd" },
    { 14, 0, 0, 8, "2125b166bcdf37da95d3bf221eda8f701527e2a5a426252fe56886c35ecdcd73" },
    { 14, 1, 20, 31, "058883ddb6b89f687a67f3202667eac08802eeef85a9cf8916af4ca03704308a" },
    { 14, 2, 40, 46, "65efa376738d72b09fd9cce016085de9b76a8a870a5207c9e407e5f1b24202e1" },
    { 14, 3, 60, 65, "d4758ab0e0886ce01ccdb9e6b63cffd21751728adf6eb50b4f2cb8c62752dd66" },
    { 14, 4, 80, 85, "2945b8d1312d845b5337117c185f31a729639aa6f37786aa50ee21562ff2f06e" },
    { 15, 0, 0, 10, "6f1769c6677c9722026bf045b26a7e733fff98f9739617f5f0653eb9a7056c43" },
    { 15, 1, 20, 28, "e715742dc15c1674fef7910dff4b93a9ae7ab65462793cdaecda5b6d69e8ab5b" },
    { 15, 2, 40, 45, "ff288a16943a627960ce0b545e028e7726bf2df198a5a6caf8baeb3db228e872" },
    { 15, 3, 60, 72, "26c312fca357fae20ca0411849d118bf6f455476aed3501145df4126c62f137d" },
    { 15, 4, 80, 82, "6ac51bd53a86210d360be256ef39ba851a937c1b9a9803ab2e75146d11c47ec3" },
    { 15, 5, 100, 105, "268800c4e3b7448614f13bc168e45fc982a20b09b77c04ac26070ef3f5d340c3" },
    { 16, 0, 0, 20, "2ab752330b50bce64d18185a86256bcdbd6361e860e810969643f6105bbfeee7" },
    { 16, 1, 20, 27, "b9ec6297345d27b421bd421af4668b71fd2b461e85d6d588ecabdd3cf970dbc2" },
    { 16, 2, 40, 42, "32d4008ef5e7269d4e111b54442055708934afa985f5f484053d0f732e0a5d49" },
    { 17, 0, 0, 13, "a2265f180a38dcfe5253c973e20d29e86e543d29d81cb5ef7e99e186744daf59" },
    { 17, 1, 20, 36, "0afbc8720997b042fe7694890fce25462dd79ff87f3eca738656511b4c91ab5b" },
    { 17, 2, 40, 45, "8c1dff3f262e83260efed6da9463696b0e77ddf4dd85778f75c51c1c9afccee7" },
    { 18, 0, 0, 1, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 18, 1, 20, 22, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 18, 2, 40, 41, "b84918df3401694ccd9e45882b0cc8855109bc07554395c4e8f6203ee1a524e1" },
    { 18, 3, 60, 64, "0c54733e6a07ca45a79bba78e2d5b62f941b5b44a86c6c927b3223acf6354a54" },
    { 18, 4, 80, 100, "235fa9a6dd26752a08e4fe34c97078bde5d7a1a2c50ae67e618e64c4a27050d5" },
    { 18, 5, 100, 106, "f9524a56d9fb54766b36b9d29936c22312a00d300ccc729e80a0ed58f6f214f4" },
    { 18, 6, 120, 124, "57aaecfd004f78154308f0945d6b80c3a2bc9650fc9eefdb71e7e8a475de622c" },
    { 18, 7, 140, 141, "1b061cc93ac4aa8a6e8cc1d44a7eb7e8cefa966178ed6a048f69f804760d72a8" },
    { 18, 8, 160, 163, "0d3f76caed1dfe1c928ff007d45e738ed070317c0ae7762b789ea06c69a76123" },
    { 19, 0, 0, 2, "b407a980facfdaf1a67c17d9fe0b4f2175e3f8a2c99e82c7cd98224cd96a7ef7" },
    { 19, 1, 20, 30, "db9bdbb809eea7042401dd606b9c6b04405e2c32b45b616a14007b1df54fd91b" },
    { 19, 2, 40, 49, "a38bbd5f9818aef02de3aa7b0b4752b99f5ca605504f8ffdd268833f41668574" },
    { 19, 3, 60, 69, "5e0c46cea250355711e0c0a4db6c8f7c6275dfedd9bce36ced58bdf2f2e20fea" },
    { 19, 4, 80, 81, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 19, 5, 100, 103, "9cd67820526dfcb3ebbd9cc1b3c7e5831e9eaa8d5d2caa51229a80361cde4ceb" },
    { 19, 6, 120, 122, "357159cd90bcb8c3b289851932a6c0a1f8a068dd4a030cd37450abd5794536e1" },
    { 19, 7, 140, 144, "5601cb96ccde2a6296e247d4fd906c264b4c438736af0cc29418e49aca92b37e" },
    { 20, 0, 0, 13, "018b94e0921e4c37668d60ba2ea34352936ade31f60627228bf6588c08143ec9" },
    { 20, 1, 20, 22, "2965d9270c5eb4839bb7813388f0b2bfe4f88f6126df024725c6bbe01410a5b0" },
    { 20, 2, 40, 41, "eca1d0537e59a10140b2639f15da74967450f4f8a3cb6de70805ccb28ff89287" },
    { 20, 3, 60, 64, "4f239f563ac7948ca77bafb789fa268a84ab5b66239a25ae004f4cc7f6992388" },
    { 20, 4, 80, 84, "c8d62ec6b908bb2ef18f62dfd374f37c0cc4d236ff39157108c00313df8a14f8" },
    { 20, 5, 100, 103, "94c06992fbdde15ed9b093c64b6743bdeb0d942fe276c9da47f7afd44523c925" },
    { 20, 6, 120, 122, "22ce31670f084444160b0f2b761e879576fc71d6dbb45710d205cda18b8e0571" },
    { 20, 7, 140, 148, "b3a08484833a0faa7ae9e1ff33365c5941e6a260041a40591c1773c89567a6f5" },
    { 20, 8, 160, 161, "b84918df3401694ccd9e45882b0cc8855109bc07554395c4e8f6203ee1a524e1" },
    { 20, 9, 180, 185, "e413427022ce3f2981bf667e29e5cd5f2761fd988b07f179c4c631c25a86ecdf" },
    { 20, 10, 200, 205, "f06dce27b84e18ccb3c7e94a0679c279cd42027da23bcf1e1ca1f94e365ea420" },
    { 21, 0, 0, 10, "47978a9bfe6b479642925c8cdf150030b91daaa0e5798f639817960c54e91764" },
    { 21, 1, 20, 30, "e9a746397c795777a10089a6992a460161ca674d673fa5d569892f41812afc6b" },
    { 21, 2, 40, 43, "bce886dc89a22f9bd5e77f3f0c5496155180bf97f1d0f87b519f0fd4667ed6dd" },
    { 21, 3, 60, 62, "6e9aa138883a956d0101ccd8472a0bcdb595e32308bfa1fdd42b607b80a1b5f9" },
    { 21, 4, 80, 84, "3b4ea17eef80945632002abae8e6087d58e9b17e9ef82ffccc1c52a1828ae0d8" },
    { 21, 5, 100, 116, "997a31c2e910167d2f7a99349afb23dfe4ec763b926a65bfe2a9f4e9cf412420" },
    { 21, 6, 120, 126, "dc4f02e0797c531e93f0cb351bf289c97fe1dec7036831820cda91116cf3d0ae" },
    { 22, 0, 0, 11, "545acb1730049551f2f70cd4844bcdc2aa3bf4c0f8f69bc120f4359085f8ac37" },
    { 22, 1, 20, 21, "ae2b19ecaed02c837307f5fdb2a2501a7ebc79ae3a00b0ec7bde33c999a4db84" },
    { 22, 2, 40, 47, "c800f44b9dadfcc4e6e0499ba6ff3f4b14d4618526aebabbe7328712bcc9679e" },
    { 22, 3, 60, 70, "6278f5ea9f0079f1f8c1f76ae9626d8d57702b93b0f82ef58ef1d4621548097a" },
    { 22, 4, 80, 81, "e287a438edff1ada1b1757ebe5c513fb9e990269222e2d5502de0d5c3574ae4e" },
    { 23, 0, 0, 6, "7863113da3339d40966f45d67fe324a65769fbe437c82bf82b79b88c61816253" },
    { 23, 1, 20, 31, "1c2501a73d84aa23ae30d481a6ec238a8ac15a5039bd09d5af7c98d6856cc459" },
    { 23, 2, 40, 43, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 23, 3, 60, 63, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 23, 4, 80, 88, "a0f0432db6faa051f5510b3a671fe3cb6b0f13035d4a340095e2aca190552843" },
    { 23, 5, 100, 110, "d3735645b5c29743ccbb971f1d0a4356918f98da75b06c11ab3100b47cb0e31c" },
    { 23, 6, 120, 131, "0155d7b66a4858668b6bce45fc27c566927e155536474ca3bc89ffcb679ba73d" },
    { 24, 0, 0, 1, "f6a36d2ec3554f261bd53a5d4e233e9328d7e84fe880c6c643e808bcc68b6cb1" },
    { 24, 1, 20, 40, "38ad7295f84be0d2c51374cf667678ab13c7dd0e9b61ca159a2255f512d0d2ff" },
    { 24, 2, 40, 46, "ff71acddb09bfa8d4cc9f166ec63a9d66a503be9f9f23a8e6100cf083993c81f" },
    { 24, 3, 60, 64, "4a7176be0fdfd6028d401c2090e0dd66eb231255ebf3c3cb31d99316162d5358" },
    { 24, 4, 80, 96, "3c6d307f35653b1e5cbb423aee695a684158327932489ebf491a70ab3aebad9d" },
    { 25, 0, 0, 13, "61d0041c394c67bde2a88634736d83a8ab258e931d97f26392d16cf5a4374279" },
    { 25, 1, 20, 21, "334359b90efed75da5f0ada1d5e6b256f4a6bd0aee7eb39c0f90182a021ffc8b" },
    { 25, 2, 40, 46, "b44cd1843b0e2468dd66c1a9fbb6736d850293a94b91ab03cfef1b5bc2fc89a5" },
    { 25, 3, 60, 64, "60aa3c557f64e6544f89143d6d092bdbc0863e494191c97c39048b1ae9fc56ca" },
    { 25, 4, 80, 82, "a7db299b7357fb75f05c5c409c6eea18fe084fca5cce7ad0ce4d5e89de1319c7" },
    { 25, 5, 100, 112, "9d607fedbdb30bf6fa99bc0f3fd0778c58541d24eb99b5c7a015d0a2a9434a9b" },
    { 25, 6, 120, 132, "20d80c78988c17c36869339256b9dfa8ecc08ee9feeb1c39bf3d618468a5fdf6" },
    { 26, 0, 0, 18, "22ce01b604a07f81e9f838f92bdfe06688a0c042838ebd3a3b0549fa2cc94e29" },
    { 26, 1, 20, 24, "726e1707a16902d6df1c35afb75ab891aa67cfe1dabf1f542f5c9f1d48bcf9ff" },
    { 26, 2, 40, 41, "e6fd06358eed4d32360f2cc166fbf7417f89185c625a8d1879ca2fb9a1c79749" },
    { 26, 3, 60, 77, "a727b9ee2c5dd0e29b69d52cf75eed2ecccaf7d64357a03c074faf48b7b85556" },
    { 26, 4, 80, 81, "628db75dbbabe8aad33e4812691b58e5970fa07b3fd9278f8b217582ffd3f04f" },
    { 26, 5, 100, 102, "8609a7c830bd7c325d89d3915e2871406631c28966f9efa9a5888188d0125e4f" },
    { 26, 6, 120, 126, "3a51f8587a2a9111047be56ad7b32d2bbcddb306fcccbe1e98fd74e8ada0d979" },
    { 26, 7, 140, 145, "389855a53ad1e1b0329f9077e767134b76b5ac5e5cb6a6648d9e672d84fe49bf" },
    { 27, 0, 0, 3, "2d1bd3efb3b3b14b2143e2374504eddcf04a1b310a03f54614a143a7be8fa601" },
    { 27, 1, 20, 29, "f410d87f282648ddd0ec6f67987c85ca575265f8acff8eb09c63a8e8d670104c" },
    { 27, 2, 40, 41, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 27, 3, 60, 79, "c8767ff8db2f6f593f0afc4651a741cb0d9d61ff6f8deb00355a5f0b104a7475" },
    { 27, 4, 80, 100, "6e2d5b4a863b9b2b69c10a5624a2c53d67b1f43429ec474297cad349ab83fb66" },
    { 27, 5, 100, 106, "4c14944132348885760fa03289c057485e715c9d6b18e831cf278b85991b6cec" },
    { 27, 6, 120, 127, "bc1a93a446e2cc19bca66d8e6cbf8eb4e5b10312bddbe2643e36356deaaf1850" },
    { 27, 7, 140, 141, "334359b90efed75da5f0ada1d5e6b256f4a6bd0aee7eb39c0f90182a021ffc8b" },
    { 28, 0, 0, 10, "93860f57050eccbba897a9bf9a043891d95b02ec3021de2822bc46e241432547" },
    { 28, 1, 20, 32, "936ba785e02abc51dc48f9a5edf189c3ce4068564bc6e22e68ca833d4ed3d485" },
    { 28, 2, 40, 42, "536d0d7a56bae57dac4449119bb1c7f47cd228083b3aafeaa61cee13f6e37ccf" },
    { 28, 3, 60, 73, "e482c76737e18e2d2d2b8d3c9e53804559ad6614140ee16f899d08bd12e5d322" },
    { 28, 4, 80, 91, "e71441af84428e6ff098c7d45a4fd125a0ecc88f434393ee8da764c680d30cbd" },
    { 28, 5, 100, 103, "4a0724afcbe79738448e247b36522a0dafe3bfb6c22cfb8b8750589cbc35de91" },
    { 28, 6, 120, 121, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 28, 7, 140, 146, "334359b90efed75da5f0ada1d5e6b256f4a6bd0aee7eb39c0f90182a021ffc8b" },
    { 29, 0, 0, 18, "1486c40b965a099fdd9e807360ed94f205905aad76432c0bf11ee30ffe7c06ba" },
    { 29, 1, 20, 26, "a71e7d0f12d00dbd089259c134345b48bb5f9cde9e0ee04ad2a4393e6486d90b" },
    { 29, 2, 40, 60, "768a0fccda2ce478a5cb46543a4531eb78e95da65b4d09f56201cfe72c2ba438" },
    { 29, 3, 60, 65, "0c7ac3eb37fde65e408e891e7f19d85df3e609233aa3958b108e492ffede98b4" },
    { 29, 4, 80, 81, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 29, 5, 100, 102, "b407a980facfdaf1a67c17d9fe0b4f2175e3f8a2c99e82c7cd98224cd96a7ef7" },
    { 29, 6, 120, 128, "57be66cb6df71b7a8d76a0d1cf182a9f4bc07b5c7934efd721aac5845fad78f0" },
    { 30, 0, 0, 4, "29803ece558f3c1d38997f065ed5a643c002097c243c2c4de24185005016e8e0" },
    { 30, 1, 20, 22, "da00eca8a5222ae7f9db79833a3596ba527f30ced5f454bc296937a7d5b3168c" },
    { 30, 2, 40, 55, "21663cb149fa914fbd22c6a6a6ffea91ba59ec4084804effb40c1726a08a328e" },
    { 30, 3, 60, 72, "5ec199a3cb5c2549a5c5552a0cad53aa1056d47fd5d30ae734b7969952404661" },
    { 30, 4, 80, 82, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 30, 5, 100, 112, "a176b192bc5d5e2f6b9bf61ee96b32069a7dff4df661a84d3e19d10bad2f083d" },
    { 30, 6, 120, 128, "4ba4e133fc1779f17b3ab4d5a34f138afdaffb7da9c8019ed71ac47c4eb99eee" },
    { 30, 7, 140, 143, "e559d2c8a1469637fd8c663246913a9f3a250e985f99a9c7fb63cf6d143a59ea" },
    { 30, 8, 160, 164, "d761740b3c0677e47d7b5af39abd9da9a50b5849aae89aa17d3f3672cda3fa00" },
    { 31, 0, 0, 5, "89be2022e23976f9ac839a2f60b5ae30c96740eb0f4181ebfcc88183ed596cd8" },
    { 31, 1, 20, 22, "571ad7c308fcc18f2e74725bc819c9029fa1b9f23c633b2fecb761b216362b66" },
    { 31, 2, 40, 50, "bd48a0ea37af8069e93cdd1d3b88ee311307c03736ba6e0a9921cbcccc3725cd" },
    { 31, 3, 60, 62, "82fb4dbf67dc5b88684c0b40976c44c5881a4543f6173fa9249bcfe0551dfb24" },
    { 31, 4, 80, 82, "e29f373aa9579c6e46813f7baf26ca8c70044efbe1bac83e94ac8537ad26a9ff" },
    { 31, 5, 100, 107, "67fdb9c355feba585ea41b633a4ebd4ffeb37d6a969d1d62ce9e1bf368d8cb39" },
    { 31, 6, 120, 134, "1be02e2f57b3756ba4b855ce6a037f0c57c7a22a8b2a7dbe4abc58fead35b441" },
    { 31, 7, 140, 142, "799125c77adc29d22f84ef930980c3927126b9a60af24cbece7e5c383bad5d5c" },
    { 31, 8, 160, 162, "b407a980facfdaf1a67c17d9fe0b4f2175e3f8a2c99e82c7cd98224cd96a7ef7" },
    { 31, 9, 180, 188, "909f868e811be5b564c7d838fa3cb21f700721fdb526d2e391156964672fcb30" },
    { 31, 10, 200, 201, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881" },
    { 32, 0, 0, 20, "7d66bfb26d11eed32fe65ee388777f18397c188e6ee42d023e440943243f015a" },
    { 32, 1, 20, 27, "4c6ac16fe462e020465158e3c8c98cf0b3bcefe7628709a4fd830b005bbd0667" },
    { 32, 2, 40, 50, "a25667d702137077d8700011ce35f41eef9c2cc6b0a4bf6c0f3dbe0f373f0dde" },
    { 32, 3, 60, 63, "5f265d58e4176753ff17dd55a5e7ca28d1925da42029438ffeef9e1a53a0d17d" },
    { 32, 4, 80, 82, "f09922c2d7699decf123bac7fe5b10ab96794be58b15511ec1f5d93aed3f9dd4" },
    { 32, 5, 100, 106, "ebb7c72251090f8ef6a9e8b50c0d37e0e37c39d3643e4a88c4e089702c2abbca" },
    { 32, 6, 120, 126, "7be98d9c950b3f69864d72c3340de4ecf99e65e3cc9de8accd915c8b0d083324" },
    { 32, 7, 140, 153, "530aca1b307932ccfdb36f62f8e64298256b8517840c3e3666bfb12f95d40822" },
    { 32, 8, 160, 162, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881" },
    { 33, 0, 0, 2, "7236c7c163c7afbab9e7d951b1dc31c936bc49e831b2395e4e27ebee0cb4c42c" },
    { 33, 1, 20, 22, "ab9ba8e3efa2a588d87f641a754d7e0822bec4e3948a6128ca467026d4d7fff4" },
    { 33, 2, 40, 51, "38a3e444991377744536e25e2cec0ee9dd6d8878393cd1c7212936f4d05f7428" },
    { 33, 3, 60, 78, "9fa48834001e088c0ab561806eac073a7cb57cbab12173a6c2d8eabaac9049a9" },
    { 33, 4, 80, 93, "8418d557e75b682afbf08d75382481b2efa04f7f0a40209921e4f6f1dc834bb1" },
    { 33, 5, 100, 105, "35025017ef358d28f1705ff28c0f5ac1a64974122af155955aa7cb04421c947a" },
    { 33, 6, 120, 134, "29d3f2b0df77b66d1482f32a058a532129ce5639202a4f234c03a1a6f2daf096" },
    { 33, 7, 140, 149, "a145b1b989d91dba157986668b039808fb5299a5997977295df3dd78be6fd32e" },
    { 33, 8, 160, 162, "b0bc1ce97784e32d72aaf8e08519e769608a5693738be7ae1fe754e6610e09ad" },
    { 34, 0, 0, 9, "1f9a38dec9cd1a98018c49b0c57be24cefab5e00cd79e8f68a6b485b4a05936f" },
    { 34, 1, 20, 26, "0a186c4da3230624d0c4a57e60ea25e58113601a92b9c41064836e0638234e6a" },
    { 34, 2, 40, 48, "adccc8c98fdf8f30321baba0c65aecce7a88b8481c30bf137c6e11a3b2674391" },
    { 34, 3, 60, 68, "413961adffbe2c572ed9bd62ddf6041170be96feeb95b330e76645d0d9916216" },
    { 34, 4, 80, 87, "c8cc9830e7fa9b3668cb52934784b7610c97dad5c525ab1d863f5c82d162351a" },
    { 34, 5, 100, 108, "5f434feff6b245c35b88d15ac1981b56c8c860aad05b7d192a8b3c9c878b764f" },
    { 34, 6, 120, 122, "a065247fc0fd1e5ac7dfbb6a7cfff6d6003e8b2fd9579d1e998ea23ea3528c8f" },
    { 34, 7, 140, 142, "6620e2394cf3ce218c17b84ec9048e568b6cc9359fb8e0489ad9e82e8db5d603" },
    { 34, 8, 160, 162, "cd40f5217870c1cf6af0e8def89d644a158f8322c10cd784fc2f3f8bfe8e7701" },
    { 34, 9, 180, 186, "4ad590566a027df6708a89fe780913485ea13c3424eba947998a0346b568974a" },
    { 34, 10, 200, 203, "719366ad8eef9c90a459035855ad2398c124d21834a420b2ff2e5298870512fc" },
    { 35, 0, 0, 1, "2ecb546b6d1f66df4c912e06216e2da60bcc470ff18a3bf64e7493d69ab9cc95" },
    { 35, 1, 20, 28, "530ca7cd5ced7dcf3195a156818f3a578976aad0c912c1204a34aaf1587f6dd7" },
    { 35, 2, 40, 60, "c699d4150e722a90fcbc14091a766069fa0833a503749a02951abc5d08314a3b" },
    { 35, 3, 60, 61, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 35, 4, 80, 82, "14cba92ed11bbd1fb719c20ef091f5ac276b292def5626805913819a63d81e55" },
    { 35, 5, 100, 106, "3a261dfae63761ec7521902d183978532519e3c1ca30e6b1cd92c21035dee3a8" },
    { 35, 6, 120, 129, "af0ba5dcbef1c2af66114f42aefa82694933351a88b9accfcdf9dd3e53604926" },
    { 35, 7, 140, 141, "b84918df3401694ccd9e45882b0cc8855109bc07554395c4e8f6203ee1a524e1" },
    { 35, 8, 160, 162, "b62180eb41bff9a316de81950509ffbe0bd9c42e423d58e203dc80bc399af3cd" },
    { 35, 9, 180, 182, "e2d63471af4607c5d07e1dd12847f1b427657e87ba9bc49f27283d58fd527690" },
    { 35, 10, 200, 203, "334359b90efed75da5f0ada1d5e6b256f4a6bd0aee7eb39c0f90182a021ffc8b" },
    { 35, 11, 220, 229, "0df7e65473ea21baaddfe8d249600932b273a8df62938d078873f9264d4159ca" },
    { 36, 0, 0, 6, "86d959596f4a768bc2b29fd3d39d9b4b60021716442b994bf6e927b4a4c6d469" },
    { 36, 1, 20, 27, "3f327998aad9f0c08ebf0f9ffc4567c7bfead6c90a251f202f12dd773bb9ac8a" },
    { 36, 2, 40, 43, "714cd0c7e4b5eba6c5003a2237b8fa08a6d9f8e7f4e1ad4d786ee26439d723ef" },
    { 36, 3, 60, 80, "ace3bda023b6dd1fa6034ae8e54dc004f82c42eb8498f3b9ef8323784d5633cc" },
    { 36, 4, 80, 81, "79aeaf7ba450cdab4b13e948c49101b1de4d13e9b45e10e51ee99442c982a7e8" },
    { 36, 5, 100, 114, "b7c7fa81b10a7406747e6cb8280c49b2cd353ff1341b55da69443595f456c6d9" },
    { 36, 6, 120, 130, "788abd262fa79f7ccd81eb197719be487040bcc2b616f280497ea2b752554817" },
    { 37, 0, 0, 14, "168486898f0f4048a6d14d348505aecfdd7fd7011d6bc32ef11028b8046185d6" },
    { 37, 1, 20, 24, "1c139300b3f25ead49d85a0d8d00d8b86d4034acc3b72c54c2936181d4271016" },
    { 37, 2, 40, 51, "d2d82441dec7f7384b10d0ba51f75f59d3507718f912062268063e765066697f" },
    { 37, 3, 60, 67, "95a66450a4d83e8868c6f270816e21ad087f8eb33578e21b66866114984fcf89" },
    { 37, 4, 80, 98, "3c5a6e532fd2a59a93c678fa3c803478362168da07f6290031a81d9993542e2a" },
    { 38, 0, 0, 17, "378e874d6b60053ab881dd4f47e84d33034ee6ca97115d2f96b4550e693315a3" },
    { 38, 1, 20, 30, "412dc1f1cc61bcdd667833d6ebc1cbe4d8c64b5cb9aafd9434f4c54a3c886bb5" },
    { 38, 2, 40, 43, "763e4b8314682cc1370cc1ed22889f220ad699854175a6b209940f5d2c601f73" },
    { 38, 3, 60, 68, "bed989bcc54090436d88f5db3278c2dec9c5f83b9e06639c74e6efebce589f21" },
    { 38, 4, 80, 95, "ca74a9545554d6267937cb28882715668aba489a84803b72835b865a768b00fb" },
    { 38, 5, 100, 109, "aa24287839f94834cfc7e9f418d029c89fa03a69e689162529ccf27b172dbca1" },
    { 38, 6, 120, 121, "766b95d07cebdeef1190b7956431ee78fc0a6c27edac49cebc1c0f8088b20951" },
    { 38, 7, 140, 153, "da3debaf925349a08c6f875fe00e35240fe33f5c2f1f91a0100ebce924538315" },
    { 38, 8, 160, 164, "c0469b990cb17d8afb6c85692f9d11b7a41e02c25e03a52deebd457440cc6a8c" },
    { 38, 9, 180, 187, "00901cbc5839ad160a3632e8c2a514b0128ca235c30381a5ae3e63e716ffce9c" },
    { 38, 10, 200, 202, "2c71f89056be58fcc8f648c89174cb4c6da51ae457a717365431763e283cba0c" },
    { 39, 0, 0, 6, "3a56daf8835c938db08f8194aad3e8dada138e9b7e3317eb3b826f2027848cf3" },
    { 39, 1, 20, 24, "b84918df3401694ccd9e45882b0cc8855109bc07554395c4e8f6203ee1a524e1" },
    { 39, 2, 40, 50, "49dc487cab9dc2dc3a11db8cdfd1f05dff26b141e6f4ac5b195b5405280f6112" },
    { 39, 3, 60, 63, "a3f41e39d30af6141a8dfb36e5af10ccf5772f11ea8fa26312396d121a994610" },
    { 39, 4, 80, 91, "230f8caad721fe7d0fc569aff9bde239d7dc9d5b7081fb38346016b059fa9d8d" },
    { 39, 5, 100, 106, "f02ab6ff454084c0641b118e74cb1a9285bfe16f4a5f38589f9f9fa1664f1b6c" },
    { 39, 6, 120, 140, "2bf14692e15533a480108d8ce2f5d80c7773caab5a0f0c96ae7130946425c787" },
    { 39, 7, 140, 147, "0b965adef8b3f4ab678d917543de9c5d4cdf8d9cecfe24f618fb6383b73d5b60" },
    { 39, 8, 160, 170, "d8b5f01880a227e78bbc8e4725602a99223255edb361bc34d6fed872243e415e" },
    { 39, 9, 180, 188, "c830583d14d991204dcbd17d4d7f2712d756cd9184984531611bc1dbf753485a" },
    { 40, 0, 0, 3, "1dff6c3f980c6a82f6e083ea7905dd883819bd9576b31bd791e8f2791cba2b65" },
    { 40, 1, 20, 29, "7642e000abad4be31da8dadd9bc715397a615dc2ea460f5bf2b74e3f07ab4014" },
    { 40, 2, 40, 47, "a1d2a1c0665e13a37f1799989c1eaa9651923691ac990ee18ff72965f50c24a2" },
    { 40, 3, 60, 66, "8683f353a4525b5b2ad313a1225ea05b6655246d6f0be83ebaf2a8823bf22d4b" },
    { 40, 4, 80, 87, "c72a67b659fe7cc66633a1351cc70cfa74cbc45c92978e0e8527369837b3ec73" },
    { 40, 5, 100, 119, "0c2d404ecc39e7d097e0918109cc3967368d0d76eeb0c3c2a4d5a22746c690aa" },
    { 40, 6, 120, 140, "3c9f172406e42432682acdfee37d3c6fe83c4cf8a1f4d3a591d8827db7c8a41f" },
    { 40, 7, 140, 160, "c1a125f0c1fcee3eb6e8689e775ccfea50a45deebb5770e406d0dad38211569d" },
    { 40, 8, 160, 162, "acfa92747bb3b6fcdd0e61da682d2fc4fa45c96f5315faeebfd94fa2697e5a9d" },
    { 40, 9, 180, 182, "1dd990583b0c1ee914ab6d219784a7de7a02680b067d30224a4202995c979eb4" },
};

Test(chunker, chunks_match_python_on_generated_documents)
{
    size_t row = 0, nrows = sizeof LCG_CHUNKS / sizeof LCG_CHUNKS[0];
    for (int seed = 1; seed <= 40; seed++) {
        size_t len;
        char *doc = lcg_doc((uint64_t)seed, 40 + 7 * seed, &len);
        dp_chunk_list l;
        dp_err rc = dp_chunk_markdown(doc, len, &l, NULL, 0);
        size_t expected = 0;
        while (row + expected < nrows && LCG_CHUNKS[row + expected].seed == seed)
            expected++;
        cr_assert_eq(rc, expected ? DP_OK : DP_ERR_PERMANENT, "seed %d", seed);
        cr_assert_eq(l.count, expected, "seed %d: %zu chunks, python %zu", seed, l.count, expected);
        for (size_t i = 0; i < expected; i++, row++) {
            const dp_chunk *c = &l.items[i];
            cr_assert_eq(c->ord, LCG_CHUNKS[row].ord);
            cr_assert_eq(c->start_line, LCG_CHUNKS[row].start_line, "seed %d chunk %zu", seed, i);
            cr_assert_eq(c->end_line, LCG_CHUNKS[row].end_line, "seed %d chunk %zu", seed, i);
            cr_assert_str_eq(c->sha256, LCG_CHUNKS[row].sha, "seed %d chunk %zu", seed, i);
            cr_assert_eq(strlen(c->text), c->text_len);
        }
        dp_chunk_list_free(&l);
        free(doc);
    }
    cr_assert_eq(row, nrows);
}

/* ---- large input ---------------------------------------------------------- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

Test(chunker, ten_megabyte_document_is_chunked_in_linear_time)
{
    /* 10 MiB of markdown: a heading every 30 lines, so both flush rules fire. */
    const size_t len = (size_t)10 << 20;
    char *doc = malloc(len);
    size_t n = 0, lines = 0;
    while (n < len) {
        const char *line = lines % 30 == 0 ? "## A heading\n"
                                           : "Plain paragraph text, about sixty bytes long.   \n";
        size_t ll = strlen(line);
        if (ll > len - n)
            ll = len - n;
        memcpy(doc + n, line, ll);
        n += ll;
        lines++;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dp_chunk_list l;
    cr_assert_eq(dp_chunk_markdown(doc, len, &l, NULL, 0), DP_OK);
    double took = seconds_since(&t0);

    /* every 30-line period: a heading chunk of 1 line... then 20 + 9 lines */
    cr_assert_gt(l.count, lines / 30 * 2);
    size_t kept = 0;
    for (size_t i = 0; i < l.count; i++) {
        cr_assert_eq(l.items[i].ord, i);
        kept += l.items[i].text_len;
    }
    cr_assert_leq(kept, len);
    cr_assert_lt(took, 10.0, "10 MiB took %.2f s", took);   /* ~0.03 s unsanitized */
    dp_chunk_list_free(&l);
    free(doc);
}

/* ---- embedding batches ---------------------------------------------------- */

Test(batches, token_estimate_is_the_chunkers_estimate)
{
    /* Not the original's len // 4 any more (which made "abc" 0 tokens and
     * a line of digits a quarter of its cost): the batch budget counts
     * texts as markdown-simple@2 bounded them (test_tokens.c). */
    static const char *const texts[] = {"", "abc", "abcdefgh", "12345678",
                                        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
                                        "The quick brown fox jumps over the lazy dog."};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        cr_assert_eq(dp_embed_estimate_tokens(texts[i], strlen(texts[i])),
                     dp_tokens_estimate(texts[i], strlen(texts[i])), "%s", texts[i]);
    cr_assert_eq(dp_embed_estimate_tokens("abc", 3), 1);
    cr_assert_eq(dp_embed_estimate_tokens("12345678", 8), 3);
}

Test(batches, no_texts_make_no_batches)
{
    size_t end[1];
    cr_assert_eq(dp_embed_plan_batches(NULL, 0, 256, 8000, end), 0);
}

Test(batches, at_most_256_texts_per_batch)
{
    size_t tokens[600] = { 0 }, end[600];
    for (int i = 0; i < 600; i++)
        tokens[i] = 10;
    size_t n = dp_embed_plan_batches(tokens, 600, DP_EMBED_BATCH_MAX_TEXTS,
                                     DP_EMBED_BATCH_MAX_TOKENS, end);
    cr_assert_eq(n, 3);
    cr_assert_eq(end[0], 256);
    cr_assert_eq(end[1], 512);
    cr_assert_eq(end[2], 600);
}

Test(batches, at_most_8000_estimated_tokens_per_batch)
{
    size_t tokens[] = { 2000, 2000, 2000, 2000, 1, 3000, 3000, 3000 }, end[8];
    size_t n = dp_embed_plan_batches(tokens, 8, DP_EMBED_BATCH_MAX_TEXTS,
                                     DP_EMBED_BATCH_MAX_TOKENS, end);
    cr_assert_eq(n, 3);
    cr_assert_eq(end[0], 4);                /* exactly 8000 still fits */
    cr_assert_eq(end[1], 7);                /* 1 + 3000 + 3000, the next would pass 8000 */
    cr_assert_eq(end[2], 8);
}

Test(batches, a_single_text_over_the_token_limit_goes_alone)
{
    size_t tokens[] = { 100, 9000, 100, 8001, 8001 }, end[5];
    size_t n = dp_embed_plan_batches(tokens, 5, DP_EMBED_BATCH_MAX_TEXTS,
                                     DP_EMBED_BATCH_MAX_TOKENS, end);
    cr_assert_eq(n, 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(end[i], i + 1);
}

Test(batches, oversize_first_text_goes_alone)
{
    size_t tokens[] = { 20000, 1, 1 }, end[3];
    size_t n = dp_embed_plan_batches(tokens, 3, DP_EMBED_BATCH_MAX_TEXTS,
                                     DP_EMBED_BATCH_MAX_TOKENS, end);
    cr_assert_eq(n, 2);
    cr_assert_eq(end[0], 1);
    cr_assert_eq(end[1], 3);
}

Test(batches, huge_token_counts_do_not_overflow)
{
    size_t tokens[] = { SIZE_MAX, SIZE_MAX, 5 }, end[3];
    size_t n = dp_embed_plan_batches(tokens, 3, 256, 8000, end);
    cr_assert_eq(n, 3);
}

Test(batches, plan_matches_python_create_micro_batches)
{
    /* from python3: tokens, and the batch ends the original's loop gives */
    static const size_t tokens[] = { 2001, 3000, 12000, 2001, 2001, 3000, 7999, 100, 1, 12000, 3000, 2001, 8000, 7999, 12000,
        1, 0, 2001, 500, 1, 0, 3000, 12000, 8001, 8000, 0, 7999, 2000, 2001, 8000, 8001, 7999,
        8000, 1, 7999, 0, 3000, 0, 0, 0, 100, 100, 7999, 0, 12000, 2001, 1999, 2001, 7999, 100,
        3000, 100, 8000, 500, 2001, 0, 8000, 0, 2001, 8000, 500, 2000, 3000, 0, 8001, 500, 1999,
        12000, 100, 3000, 500, 0, 0, 7999, 12000, 0, 2000, 0, 500, 2000 };
    static const size_t expected[] = { 2, 3, 6, 7, 9, 10, 12, 13, 14, 15, 22, 23, 24, 26, 27, 29, 30, 31, 32, 33, 36, 42, 44,
        45, 48, 49, 52, 53, 56, 58, 59, 60, 64, 65, 67, 68, 73, 74, 75, 80 };
    size_t n_tokens = sizeof tokens / sizeof tokens[0];
    size_t end[sizeof tokens / sizeof tokens[0]];
    size_t n = dp_embed_plan_batches(tokens, n_tokens, DP_EMBED_BATCH_MAX_TEXTS,
                                     DP_EMBED_BATCH_MAX_TOKENS, end);
    cr_assert_eq(n, sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(end[i], expected[i], "batch %zu", i);
}
