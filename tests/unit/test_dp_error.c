/*
 * dp_error: messages stay valid UTF-8 however they are cut, and outside
 * bytes quoted into them are made printable UTF-8.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dp_error.h"

Test(dp_errf, test_a_message_cut_inside_a_character_loses_the_whole_character)
{
    char buf[6];
    /* "abc" + U+00E9 (2 bytes) + U+2014 (3 bytes): 5 bytes fit, then a cut. */
    cr_assert_eq(dp_errf(DP_ERR_PERMANENT, buf, sizeof(buf), "abc%s", "\xc3\xa9\xe2\x80\x94"),
                 DP_ERR_PERMANENT);
    cr_assert_str_eq(buf, "abc\xc3\xa9");
    char small[5];
    dp_errf(DP_ERR_PERMANENT, small, sizeof(small), "abc%s", "\xc3\xa9");
    cr_assert_str_eq(small, "abc");
    char whole[8];
    dp_errf(DP_ERR_PERMANENT, whole, sizeof(whole), "ab%s", "\xe2\x80\x94!!");
    cr_assert_str_eq(whole, "ab\xe2\x80\x94!!");
}

Test(dp_err_quote, test_invalid_bytes_and_controls_become_question_marks_and_breaks_spaces)
{
    char out[64];
    const char in[] = "caf\xc3\xa9 \xe9t\xe9\x00\x1b[1m\r\n\xed\xa0\x80\xf4\x90\x80\x80ok";
    size_t n = dp_err_quote(out, sizeof(out), in, sizeof(in) - 1);
    cr_assert_str_eq(out, "caf\xc3\xa9 ?t???[1m  ???????ok"); /* 3 + 4 bytes */
    cr_assert_eq(n, strlen(out));
}

Test(dp_err_quote, test_a_character_that_does_not_fit_is_left_out)
{
    char out[5];
    dp_err_quote(out, sizeof(out), "ab\xe2\x80\x94", 5);
    cr_assert_str_eq(out, "ab");
    dp_err_quote(out, sizeof(out), "ab\xe2\x80", 4); /* cut in the input itself */
    cr_assert_str_eq(out, "ab??");
}
